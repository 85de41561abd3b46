// Package consuld embeds the agent configuration files we ship, so the local provider
// runs its servers with exactly these files, rendered for local paths.
package consuld

import _ "embed"

// Paths the shipped files use; the local provider replaces them with its own.
const (
	BinDir     = "/opt/consul-rehydrate/bin"
	ConfigPath = "/etc/consul-rehydrate/config.hcl"
)

// ServerHCL is server.hcl: settings every server shares.
//
//go:embed server.hcl
var ServerHCL string

// WatchesHCL is watches.hcl: the spinup and spindown watches.
//
//go:embed watches.hcl
var WatchesHCL string

// DeployWebHCL is deploy-web.hcl: a service with an HTTP check, and the deploy
// handler's key watch for it.
//
//go:embed deploy-web.hcl
var DeployWebHCL string

// Placeholders of DeployWebHCL.
const (
	DeployConfigPath = "/etc/consul-rehydrate/deploy.hcl"
	NodeName         = "NODE_NAME"
)

// ReconfigureServiceHCL is reconfigure-service.hcl: the watched "monitoring" service
// with its HTTP check.
//
//go:embed reconfigure-service.hcl
var ReconfigureServiceHCL string

// ReconfigureWatchHCL is reconfigure-watch.hcl: the reconfigure handler's service
// watch and its check.
//
//go:embed reconfigure-watch.hcl
var ReconfigureWatchHCL string

// ReconfigureConfigPath is the placeholder of the handler's file in ReconfigureWatchHCL.
const ReconfigureConfigPath = "/etc/consul-rehydrate/reconfigure.hcl"
