cluster = "main"
servers = 3
