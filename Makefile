# consul-rehydrate — every target installs what it needs itself (into a cache outside
# the work tree), so a fresh machine needs only Go and `make`.

SHELL := /usr/bin/env bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

CONSUL_VERSION      := 1.22.3
# The older Consul that image A runs in the upgrade roll (test/e2e/upgrade_test.go and
# the bench): the oldest release that builds from the module proxy (no v1.21.x does;
# scripts/tools/consul-old/go.mod says why).
CONSUL_OLD_VERSION  := 1.22.0
STATICCHECK_VERSION := v0.8.2
AEMM_VERSION        := v1.13.0
PACKER_VERSION      := 1.12.0
# The Lambda runtime interface emulator: a pseudo-version, the module has no tags.
RIE_VERSION         := v0.0.0-20261030222936-bef5c4ba774d

CACHE_DIR   ?= $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/consul-rehydrate
CONSUL_DIR  := $(CACHE_DIR)/consul-$(CONSUL_VERSION)
CONSUL_BIN  := $(CONSUL_DIR)/consul
CONSUL_OLD_DIR := $(CACHE_DIR)/consul-$(CONSUL_OLD_VERSION)
CONSUL_OLD_BIN := $(CONSUL_OLD_DIR)/consul
TOOLS_BIN   := $(CACHE_DIR)/tools
STATICCHECK := $(TOOLS_BIN)/staticcheck-$(STATICCHECK_VERSION)
AEMM_DIR    := $(CACHE_DIR)/ec2-metadata-mock-$(AEMM_VERSION)
AEMM        := $(AEMM_DIR)/ec2-metadata-mock
PACKER_DIR  := $(CACHE_DIR)/packer-$(PACKER_VERSION)
PACKER      := $(PACKER_DIR)/packer
PACKER_AMAZON := $(PACKER_DIR)/plugins/github.com/hashicorp/amazon/packer-plugin-amazon_v1.3.4_x5.0_linux_amd64
RIE_DIR     := $(CACHE_DIR)/aws-lambda-rie-$(RIE_VERSION)
RIE         := $(RIE_DIR)/aws-lambda-rie

HANDLERS := $(notdir $(wildcard handlers/*))
# -parallel 4 and -p 4: the tests mostly wait on Consul, so more tests and more
# packages at once than there are cores (go test's default for both) shorten the run
# without starving them: a warm make test took 363 s with -p 2 and 294 s with -p 4
# on 2 cores, its slowest package (test/e2e, ~236 s) no slower.
GO_TEST_FLAGS ?= -race -count=1 -timeout 45m -parallel 4 -p 4

# Tests and the demo find the pinned consul, ec2-metadata-mock, packer and the Lambda
# runtime interface emulator first on PATH.
export PATH := $(CONSUL_DIR):$(AEMM_DIR):$(PACKER_DIR):$(RIE_DIR):$(PATH)
export PACKER_PLUGIN_PATH := $(PACKER_DIR)/plugins
export CHECKPOINT_DISABLE := 1
# The upgrade roll's older Consul is not put on PATH (the pinned one must win there):
# the tests and the bench find it here.
export REHYDRATE_CONSUL_OLD := $(CONSUL_OLD_BIN)

.PHONY: help
help: ## show the targets
	@grep -hE '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

.PHONY: consul
consul: $(CONSUL_BIN) ## build the pinned Consul into the cache (no-op when cached)

# No file prerequisites: a fresh clone has new mtimes, and the version is in the path.
# The version line is read with sed, which reads to the end: head would exit first and
# SIGPIPE consul under pipefail (test/validate checks every recipe and script for that).
$(CONSUL_BIN):
	@echo "building consul $(CONSUL_VERSION) into $(CONSUL_DIR) (cold: ~10 min)"
	@mkdir -p $(CONSUL_DIR)
	cd scripts/tools/consul && go build -trimpath -ldflags='-s -w' -o $@.tmp github.com/hashicorp/consul
	@mv $@.tmp $@
	@$@ version | sed -n 1p

.PHONY: consul-old
consul-old: $(CONSUL_OLD_BIN) ## build the older Consul of the upgrade roll into the cache (no-op when cached)

# As $(CONSUL_BIN), from its own module: the two Consuls' dependency graphs differ.
# The version is pinned in two places (here and that go.mod): a build that is not
# CONSUL_OLD_VERSION fails rather than being cached under its name.
$(CONSUL_OLD_BIN):
	@echo "building consul $(CONSUL_OLD_VERSION) into $(CONSUL_OLD_DIR) (cold: ~10 min)"
	@mkdir -p $(CONSUL_OLD_DIR)
	cd scripts/tools/consul-old && go build -trimpath -ldflags='-s -w' -o $@.tmp github.com/hashicorp/consul
	@$@.tmp version | sed -n 1p | grep -Fx 'Consul v$(CONSUL_OLD_VERSION)' || \
	  { echo "scripts/tools/consul-old/go.mod does not pin consul $(CONSUL_OLD_VERSION)"; rm -f $@.tmp; exit 1; }
	@mv $@.tmp $@

# Static (CGO_ENABLED=0): a watch handler runs at every health change and event, and a
# static binary spares each run the dynamic loader (see BENCHMARKS.md, section 7).
.PHONY: build
build: ## build every handler into bin/
	@mkdir -p bin
	CGO_ENABLED=0 go build -trimpath -o bin/ $(addprefix ./handlers/,$(HANDLERS))

.PHONY: demo
demo: $(CONSUL_BIN) build ## roll a real local cluster from image A to B under write load (SERVERS=3)
	bin/rehydrate local demo --servers $${SERVERS:-3}

$(AEMM):
	@mkdir -p $(AEMM_DIR)
	GOBIN=$(AEMM_DIR) go install github.com/aws/amazon-ec2-metadata-mock/cmd/ec2-metadata-mock@$(AEMM_VERSION)

$(RIE):
	@mkdir -p $(RIE_DIR)
	GOBIN=$(RIE_DIR) go install github.com/aws/aws-lambda-runtime-interface-emulator/cmd/aws-lambda-rie@$(RIE_VERSION)

.PHONY: e2e-trigger
e2e-trigger: $(CONSUL_BIN) $(RIE) ## the image-published Lambda under the real runtime emulator, against the AWS fake and a local cluster
	go test -count=1 -timeout 15m -run 'TestTrigger' -v ./test/e2e/ | grep -E '^\{"servers"|^(--- |ok|FAIL|PASS)|Error'

.PHONY: e2e-aws
e2e-aws: $(CONSUL_BIN) ## roll 3 servers through the aws provider against the wire-level EC2/ASG fake
	go test -count=1 -timeout 15m -run 'TestAWSRoll' -v ./test/e2e/ | grep -E '^\{"servers"|^(--- |ok|FAIL|PASS)|Error'

# The system tools the tests run for real come from Debian's packages: shellcheck
# (0.9.0 on bookworm); gpg and gpgv (install-consul.sh's signature check); openssl
# (user-data.sh's certificate checks); unzip; the aws CLI (user-data.sh reads its
# secrets from SSM); systemd's systemd-analyze and systemctl (the image's units are
# verified and enabled offline). Each is installed only when missing.
SYSTEM_TOOLS = shellcheck:shellcheck gpg:gpg gpgv:gpgv openssl:openssl unzip:unzip aws:awscli systemd-analyze:systemd systemctl:systemd
.PHONY: shellcheck system-tools
shellcheck: system-tools
system-tools:
	@missing=; for t in $(SYSTEM_TOOLS); do \
	  command -v "$${t%%:*}" >/dev/null || missing="$$missing $${t#*:}"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing$$missing"; \
	  sudo=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$sudo apt-get update -qq && $$sudo apt-get install -y -qq $$missing; fi

# Packer and its Amazon plugin, built from pinned sources and installed offline
# (scripts/tools/packer/README.md).
$(PACKER):
	@echo "building packer $(PACKER_VERSION) into $(PACKER_DIR) (cold: ~4 min)"
	@mkdir -p $(PACKER_DIR)
	cd scripts/tools/packer && go build -trimpath -ldflags='-s -w' -o $@.tmp github.com/hashicorp/packer
	@mv $@.tmp $@

$(PACKER_AMAZON): | $(PACKER)
	cd scripts/tools/packer && go build -trimpath -ldflags='-s -w' -o $(PACKER_DIR)/packer-plugin-amazon github.com/hashicorp/packer-plugin-amazon
	$(PACKER) plugins install --path $(PACKER_DIR)/packer-plugin-amazon github.com/hashicorp/amazon

.PHONY: validate
validate: $(CONSUL_BIN) $(AEMM) $(PACKER_AMAZON) shellcheck ## packer validate+fmt, shellcheck, consul validate (each also on a broken fixture)
	go test -count=1 ./test/validate/ ./test/userdata/

.PHONY: test
test: $(CONSUL_BIN) $(CONSUL_OLD_BIN) $(AEMM) $(PACKER_AMAZON) $(RIE) shellcheck ## unit and integration tests against a real Consul, race detector on
	go test $(GO_TEST_FLAGS) ./...

.PHONY: bench
bench: $(CONSUL_BIN) $(CONSUL_OLD_BIN) ## benchmark our roll against an ASG instance refresh, a Consul upgrade, 5 servers with data, idle handlers (<20 min; writes test/bench/BENCHMARKS.md and its pictures)
	go run ./test/bench -out test/bench/BENCHMARKS.md -json test/bench/benchmarks.json

$(STATICCHECK):
	@mkdir -p $(TOOLS_BIN)
	GOBIN=$(TOOLS_BIN) go install honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION)
	@mv $(TOOLS_BIN)/staticcheck $@

.PHONY: lint
lint: $(STATICCHECK) ## gofmt, go vet, staticcheck
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	go vet ./...
	$(STATICCHECK) ./...

.PHONY: fuzz
fuzz: ## run every fuzz target for FUZZTIME each (default 30s; not in CI)
	@for pkg in $$(go list ./...); do \
	  for f in $$(go test -list '^Fuzz' $$pkg | grep '^Fuzz' || true); do \
	    echo "== $$pkg $$f"; go test -run '^$$' -fuzz "^$$f$$" -fuzztime $${FUZZTIME:-30s} $$pkg; \
	  done; \
	done

.PHONY: clean
clean: ## remove bin/ (the cache stays)
	rm -rf bin
