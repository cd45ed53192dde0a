package warren

import (
	"context"
	"errors"
	"sync"
)

// ctxLock is a mutex whose Lock gives up when a ctx ends. The zero value is
// unlocked.
type ctxLock struct {
	once  sync.Once
	token chan struct{} // holds one value while locked
}

// errLockAbandoned is returned by lock when its stop channel closed first.
var errLockAbandoned = errors.New("warren: lock wait abandoned")

// lock takes the lock, or returns ctx's error when ctx ends first, or
// errLockAbandoned when stop is closed first.
func (l *ctxLock) lock(ctx context.Context, stop <-chan struct{}) error {
	l.once.Do(func() { l.token = make(chan struct{}, 1) })
	select {
	case l.token <- struct{}{}:
		return nil
	default:
	}
	select {
	case l.token <- struct{}{}:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	case <-stop:
		return errLockAbandoned
	}
}

// unlock releases the lock; it must be held.
func (l *ctxLock) unlock() { <-l.token }
