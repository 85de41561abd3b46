// Command image-published is the Lambda that starts a roll when an image is
// published (package trigger). Built for Lambda with -tags lambda.norpc as
// `bootstrap` for the provided.al2023 runtime.
package main

import (
	"context"
	"os"

	"github.com/aws/aws-lambda-go/lambda"
	"github.com/hashicorp/go-hclog"

	"github.com/consul-rehydrate/consul-rehydrate/internal/app"
	"github.com/consul-rehydrate/consul-rehydrate/internal/trigger"
)

func main() {
	log := hclog.New(&hclog.LoggerOptions{Name: "image-published", Output: os.Stderr, Level: hclog.Info})
	t, err := trigger.FromEnv(context.Background(), os.Getenv, log)
	if err != nil {
		// An init error: Lambda reports it and retries the cold start.
		log.Error("set up", "error", err)
		os.Exit(app.ExitConfig)
	}
	lambda.Start(handler{t})
}

// handler takes the invocation's payload as bytes: a payload that is not JSON
// reaches Handle (which refuses it, logged, and succeeds) instead of failing in
// the runtime's decoding, which EventBridge would retry.
type handler struct{ t *trigger.Trigger }

func (h handler) Invoke(ctx context.Context, payload []byte) ([]byte, error) {
	if err := h.t.Handle(ctx, payload); err != nil {
		return nil, err
	}
	return []byte("null"), nil
}
