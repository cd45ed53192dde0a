package warren_test

import (
	"context"
	"errors"
	"log"
	"time"

	"github.com/warrenmq/warren"
)

// fetchToken stands for an OAuth 2 client that returns an access token
// and its expiry.
func fetchToken(ctx context.Context) (string, time.Time, error) {
	return "token", time.Now().Add(time.Hour), ctx.Err()
}

// Short-lived credentials: the provider is asked at every dial, reconnect
// and failover attempt, and the refresher renews the secret on the live
// connection (connection.update-secret) at 80% of its life.
func ExampleWithCredentials() {
	ctx := context.Background()
	provider := func(ctx context.Context) (warren.Credentials, error) {
		token, expires, err := fetchToken(ctx)
		if err != nil {
			return warren.Credentials{}, err
		}
		return warren.Credentials{Username: "svc-orders", Secret: token, ValidUntil: expires}, nil
	}
	client, err := warren.Dial(ctx, "amqps://broker.example.com/",
		warren.WithCredentials(provider),
		warren.WithCredentialRefresh(warren.RefreshPolicy{}), // Fraction 0.8 by default
		warren.WithReconnect(warren.ReconnectPolicy{}))
	if err != nil {
		log.Fatal(err) // errors.Is(err, warren.ErrCredentialsProvider) when the provider failed
	}
	defer client.Close(ctx)
}

// A rotated password: tell the live connection, and later reconnects of
// this Client use it too.
func ExampleClient_UpdateSecret() {
	ctx := context.Background()
	client, err := warren.Dial(ctx, "amqp://app:old-password@localhost:5672/")
	if err != nil {
		log.Fatal(err)
	}
	defer client.Close(ctx)

	uctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	err = client.UpdateSecret(uctx, "new-password", "rotation")
	if errors.Is(err, warren.ErrSecretRefused) {
		log.Fatal("the broker refused the new secret and closed the connection")
	}
}
