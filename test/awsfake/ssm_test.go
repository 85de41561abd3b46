package awsfake

import (
	"context"
	"errors"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ssm"
	ssmtypes "github.com/aws/aws-sdk-go-v2/service/ssm/types"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestSSM_GetParameterThroughTheSDK(t *testing.T) {
	s := New(Options{})
	defer s.Close()
	s.AddParameter(Parameter{Name: "/consul-rehydrate/main/trigger-token", Value: "secret-value"})
	c := ssm.NewFromConfig(s.Config())
	ctx := context.Background()

	out, err := c.GetParameter(ctx, &ssm.GetParameterInput{Name: aws.String("/consul-rehydrate/main/trigger-token"), WithDecryption: aws.Bool(true)})
	require.NoError(t, err)
	assert.Equal(t, "secret-value", aws.ToString(out.Parameter.Value))
	assert.Equal(t, ssmtypes.ParameterTypeSecureString, out.Parameter.Type)

	out, err = c.GetParameter(ctx, &ssm.GetParameterInput{Name: aws.String("/consul-rehydrate/main/trigger-token")})
	require.NoError(t, err)
	assert.NotEqual(t, "secret-value", aws.ToString(out.Parameter.Value), "a SecureString without WithDecryption stays encrypted")

	_, err = c.GetParameter(ctx, &ssm.GetParameterInput{Name: aws.String("/nope"), WithDecryption: aws.Bool(true)})
	var nf *ssmtypes.ParameterNotFound
	require.True(t, errors.As(err, &nf), "%v", err)
}
