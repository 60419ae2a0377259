//go:build tools

// Package tools pins the KServe commands that hack/kserve builds into ./bin (make third-party-images-local): the
// controller and the agent KServe injects beside an InferenceService's predictor.
package tools

import (
	_ "github.com/kserve/kserve/cmd/agent"
	_ "github.com/kserve/kserve/cmd/manager"
)
