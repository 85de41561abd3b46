cluster = "main"
servers = 3

provider "gcp" {
  project = "consul"
}
