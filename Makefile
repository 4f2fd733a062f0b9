# Code generation tools are pinned here and installed into .bin/, so they stay
# out of go.mod. Bump a version, then run `make generate` and commit the result.
BIN := $(CURDIR)/.bin

BUF_VERSION := v1.75.0
PROTOC_GEN_GO_VERSION := v1.36.12
PROTOC_GEN_GO_GRPC_VERSION := v1.6.2

.PHONY: generate tools

## tools: install the pinned code generators into .bin/
tools:
	GOBIN=$(BIN) go install github.com/bufbuild/buf/cmd/buf@$(BUF_VERSION)
	GOBIN=$(BIN) go install google.golang.org/protobuf/cmd/protoc-gen-go@$(PROTOC_GEN_GO_VERSION)
	GOBIN=$(BIN) go install google.golang.org/grpc/cmd/protoc-gen-go-grpc@$(PROTOC_GEN_GO_GRPC_VERSION)

## generate: regenerate runnerapi/runnerpb from runnerapi/proto
generate: tools
	cd runnerapi/proto && PATH="$(BIN):$$PATH" $(BIN)/buf generate
