cluster = "main"
servers = 9

provider "aws" {
  endpoint_url = "localhost:4566"
  max_attempts = 21
}
