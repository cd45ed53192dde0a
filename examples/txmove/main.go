// Command txmove shows AMQP transactions: it moves messages from an inbox
// queue to an outbox queue so that each move (basic.get from the inbox,
// publish to the outbox, ack) happens on commit, or not at all.
//
//   - Client.Tx moves one message and commits.
//   - A second Client.Tx does the same work but its function returns an
//     error: the transaction rolls back and the message stays in the inbox
//     (it comes back with Redelivered set).
//   - A tx Pool (PoolOptions{Mode: warren.ModeTx}) moves the rest with
//     Pool.Tx from a few goroutines, leasing tx channels instead of opening
//     a channel per transaction as Client.Tx does; it prints the pool's
//     Stats (channels opened, discarded).
//
// Queue depths are read with a passive QueueDeclare before and after each
// step.
//
// It finds a broker as examples/quickstart does (AMQP_URL, the local default
// broker on 127.0.0.1:5672, or a private node it starts and stops). Its
// queues are exclusive and server-named: the broker deletes them at exit.
//
//	go run ./examples/txmove
package main

import (
	"context"
	"errors"
	"fmt"
	"log"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/warrenmq/warren"
	"github.com/warrenmq/warren/internal/brokertest"
)

const (
	messages = 20
	movers   = 4 // goroutines moving with the tx pool
)

func main() {
	if err := run(); err != nil {
		log.Printf("txmove: %v", err)
		os.Exit(1)
	}
}

func run() error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	b, stopBroker, err := brokertest.ForProgram(ctx, "txmove")
	if err != nil {
		return err
	}
	defer stopBroker()

	client, err := warren.Dial(ctx, b.URL, warren.WithName("warren-example-txmove"))
	if err != nil {
		return err
	}
	defer client.Close(ctx)

	ch, err := client.Channel(ctx)
	if err != nil {
		return err
	}
	defer ch.Close(ctx)
	inbox, err := ch.QueueDeclare(ctx, "", warren.QueueOptions{Exclusive: true})
	if err != nil {
		return err
	}
	outbox, err := ch.QueueDeclare(ctx, "", warren.QueueOptions{Exclusive: true})
	if err != nil {
		return err
	}
	fmt.Printf("inbox %s, outbox %s\n", inbox.Name, outbox.Name)

	// Fill the inbox on a confirm channel, so that the depths below are exact.
	if err := ch.SetMode(ctx, warren.ModeConfirm); err != nil {
		return err
	}
	for i := range messages {
		if err := ch.Publish(ctx, "", inbox.Name, warren.Publishing{Body: fmt.Appendf(nil, "order %d", i)}); err != nil {
			return err
		}
	}
	d := depths{ch: ch, inbox: inbox.Name, outbox: outbox.Name}
	if _, _, err := d.print(ctx, "before"); err != nil {
		return err
	}

	// move moves one message from the inbox to the outbox within tx and
	// returns it.
	errEmpty := errors.New("inbox empty")
	move := func(ctx context.Context, tx *warren.Tx) (*warren.Delivery, error) {
		m, ok, err := tx.Get(ctx, inbox.Name, warren.GetOptions{})
		if err != nil {
			return nil, err
		}
		if !ok {
			return nil, errEmpty
		}
		if err := tx.Publish(ctx, "", outbox.Name, warren.Publishing{Body: m.Body}); err != nil {
			return nil, err
		}
		return m, m.Ack(ctx) // the publish and the ack take effect on commit
	}

	// 1. One move, committed.
	err = client.Tx(ctx, func(tx *warren.Tx) error {
		m, err := move(ctx, tx)
		if err == nil {
			fmt.Printf("moving %q in a transaction\n", m.Body)
		}
		return err
	})
	if err != nil {
		return err
	}
	if _, _, err := d.print(ctx, "after a committed move"); err != nil {
		return err
	}

	// 2. One move whose function fails after its publish and ack: rolled
	// back, the message stays in the inbox.
	errValidation := errors.New("simulated failure after publish and ack")
	err = client.Tx(ctx, func(tx *warren.Tx) error {
		m, err := move(ctx, tx)
		if err != nil {
			return err
		}
		fmt.Printf("moving %q in a transaction that then fails\n", m.Body)
		return errValidation
	})
	if !errors.Is(err, errValidation) {
		return fmt.Errorf("the failing move returned %v, want the function's error", err)
	}
	fmt.Printf("rolled back: %v\n", err)
	if _, _, err := d.print(ctx, "after a rolled-back move"); err != nil {
		return err
	}

	// 3. The rest, with a tx pool shared by a few goroutines.
	pool, err := client.NewPool(ctx, warren.PoolOptions{Mode: warren.ModeTx, Size: movers})
	if err != nil {
		return err
	}
	defer pool.Close(ctx)
	start := time.Now()
	var moved atomic.Int64
	errs := make([]error, movers)
	var wg sync.WaitGroup
	for i := range movers {
		wg.Go(func() {
			for {
				err := pool.Tx(ctx, func(tx *warren.Tx) error {
					m, err := move(ctx, tx)
					if err == nil && m.Redelivered {
						fmt.Printf("moving %q again (Redelivered=true: the rolled-back message)\n", m.Body)
					}
					return err
				})
				if err != nil {
					if !errors.Is(err, errEmpty) {
						errs[i] = err
					}
					return
				}
				moved.Add(1) // committed
			}
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return err
	}
	s := pool.Stats()
	fmt.Printf("tx pool: %d goroutines committed %d moves in %v; pool max %d, channels opened %d, discarded as unfinished %d\n",
		movers, moved.Load(), time.Since(start).Round(time.Millisecond), s.Max, s.Opened, s.Discarded.TxUnfinished)
	in, out, err := d.print(ctx, "after the pool's moves")
	if err != nil {
		return err
	}
	if in != 0 || out != messages {
		return fmt.Errorf("inbox %d, outbox %d: want 0 and %d", in, out, messages)
	}
	return pool.Close(ctx)
}

// depths reads the two queues' depths with a passive declare.
type depths struct {
	ch            warren.Channel
	inbox, outbox string
}

func (d depths) read(ctx context.Context) (in, out int, err error) {
	qi, err := d.ch.QueueDeclare(ctx, d.inbox, warren.QueueOptions{Passive: true})
	if err != nil {
		return 0, 0, err
	}
	qo, err := d.ch.QueueDeclare(ctx, d.outbox, warren.QueueOptions{Passive: true})
	if err != nil {
		return 0, 0, err
	}
	return qi.Messages, qo.Messages, nil
}

func (d depths) print(ctx context.Context, when string) (in, out int, err error) {
	in, out, err = d.read(ctx)
	if err == nil {
		fmt.Printf("%-26s inbox %2d, outbox %2d\n", when+":", in, out)
	}
	return in, out, err
}
