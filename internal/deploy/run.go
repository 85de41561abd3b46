package deploy

import "github.com/consul-rehydrate/consul-rehydrate/internal/runcmd"

// Environment the deploy and rollback commands get, besides the handler's own.
const (
	EnvVersion         = "REHYDRATE_DEPLOY_VERSION"
	EnvID              = "REHYDRATE_DEPLOY_ID"
	EnvArtifact        = "REHYDRATE_DEPLOY_ARTIFACT"
	EnvPreviousVersion = "REHYDRATE_DEPLOY_PREVIOUS_VERSION"
	EnvRollback        = "REHYDRATE_DEPLOY_ROLLBACK"
	EnvService         = "REHYDRATE_DEPLOY_SERVICE"
)

// OutputTail is how much of a command's output a status keeps.
const OutputTail = runcmd.OutputTail
