// Package boltstore is a durable ondemand.Store kept in one file with
// go.etcd.io/bbolt.
//
// Every Update is on disk (written and fsynced) before it returns nil.
// Concurrent Updates share commits (group commit), so many goroutines
// writing at once pay for one fsync per commit instead of one each.
//
// Records are stored as JSON in the buckets "jobs" and "tasks" (key: the
// ID) and "events". A job's first event gives it a number, kept in
// "job_numbers". Its events are keyed by that number and the sequence, each
// 8 bytes big-endian. So one job's events are adjacent and in order, and
// the events of jobs created close together share pages whatever their IDs.
// The bucket "event_last_seq" holds each job's last sequence by number,
// which makes the gap check of AppendEvent one lookup.
//
// IDs must be valid UTF-8 and not empty; PutJob, PutTask and AppendEvent
// reject others. In other string fields, JSON encoding replaces bytes that
// are not UTF-8 with U+FFFD.
//
// Only one process can open a file at a time: Open takes an exclusive
// file lock and fails after one second when another process holds it.
package boltstore

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	bolt "go.etcd.io/bbolt"
	bolterrors "go.etcd.io/bbolt/errors"

	"github.com/odrkit/odrkit/ondemand"
)

// DefaultMaxBatchSize is the number of Updates one commit takes at most
// when Options.MaxBatchSize is zero. It bounds the work redone when an
// Update in a batch fails, because the batch is then run again without it.
const DefaultMaxBatchSize = 128

// lockTimeout is how long Open waits for another process's file lock.
const lockTimeout = time.Second

// formatVersion is the layout of buckets and records this package
// writes. Open rejects files with another version.
const formatVersion = 2

// ErrClosed is returned by Update and View after Close.
var ErrClosed = errors.New("bolt store is closed")

// Options configures Open. The zero value is a safe default.
type Options struct {
	// Logger receives messages about opening and closing the store. Nil
	// discards them.
	Logger *slog.Logger
	// NoSync skips fsync on commit. It is unsafe: after a crash of the
	// operating system or a power loss, changes that Update reported as
	// stored can be missing and the file can be corrupt. Use it only in
	// tests and benchmarks.
	NoSync bool
	// MaxBatchDelay is how long a commit waits for more Updates to join it
	// when it has fewer than MaxBatchSize. Zero, the default, commits at
	// once; Updates that arrive during a commit still share the next one.
	// A delay adds latency to every Update and helps only when many
	// goroutines write at the same moment.
	MaxBatchDelay time.Duration
	// MaxBatchSize is the number of Updates one commit takes at most. Zero
	// means DefaultMaxBatchSize, and 1 gives every Update its own commit.
	MaxBatchSize int
}

// Store is an ondemand.Store in a bbolt file. It is safe for concurrent
// use. Create it with Open.
type Store struct {
	db         *bolt.DB
	path       string
	logger     *slog.Logger
	maxBatch   int
	batchDelay time.Duration

	mu       sync.Mutex
	closed   bool
	queue    []*request
	inflight sync.WaitGroup // Update and View calls that passed the closed check

	wake          chan struct{} // signals the committer that queue is not empty
	stop          chan struct{} // closed by Close
	committerDone chan struct{}

	commits atomic.Int64 // successful commits, for tests and benchmarks
}

var _ ondemand.Store = (*Store)(nil)

// request is one Update waiting for the committer.
type request struct {
	ctx  context.Context
	fn   func(ondemand.Tx) error
	done chan result
}

type result struct {
	err error
	// runAlone signals the caller to run fn in a transaction of its own,
	// because fn panicked in the shared one. The panic then happens on the
	// caller's goroutine.
	runAlone bool
}

// Open opens the store in the file at path, creating the file with
// permissions 0600 and the buckets when they do not exist yet. The
// directory must exist.
func Open(path string, opts Options) (*Store, error) {
	if opts.MaxBatchSize < 0 {
		return nil, fmt.Errorf("open bolt store %s: invalid MaxBatchSize %d: use 0 for the default or a positive number", path, opts.MaxBatchSize)
	}
	if opts.MaxBatchDelay < 0 {
		return nil, fmt.Errorf("open bolt store %s: invalid MaxBatchDelay %s: use 0 or a positive duration", path, opts.MaxBatchDelay)
	}
	logger := opts.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	maxBatch := opts.MaxBatchSize
	if maxBatch == 0 {
		maxBatch = DefaultMaxBatchSize
	}

	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: lockTimeout, NoSync: opts.NoSync})
	if err != nil {
		return nil, openError(path, err)
	}
	if err := initBuckets(db); err != nil {
		_ = db.Close() // the initialisation error is the one to report
		return nil, fmt.Errorf("open bolt store %s: %w", path, err)
	}

	s := &Store{
		db:            db,
		path:          path,
		logger:        logger,
		maxBatch:      maxBatch,
		batchDelay:    opts.MaxBatchDelay,
		wake:          make(chan struct{}, 1),
		stop:          make(chan struct{}),
		committerDone: make(chan struct{}),
	}
	go s.runCommitter()

	logger.Info("bolt store opened", "path", path, "max_batch_size", maxBatch, "max_batch_delay", opts.MaxBatchDelay)
	if opts.NoSync {
		logger.Warn("bolt store does not fsync: a crash of the machine can lose stored changes; use NoSync only in tests", "path", path)
	}
	return s, nil
}

// openError explains why bolt.Open failed and what to do about it.
func openError(path string, err error) error {
	switch {
	case errors.Is(err, bolterrors.ErrTimeout):
		return fmt.Errorf("open bolt store %s: timed out after %s waiting for the file lock, which another process holds: stop that process or use another path: %w", path, lockTimeout, err)
	case errors.Is(err, fs.ErrNotExist):
		return fmt.Errorf("open bolt store %s: the directory does not exist: create it first: %w", path, err)
	case errors.Is(err, fs.ErrPermission):
		return fmt.Errorf("open bolt store %s: permission denied: give this process read and write access to the file and its directory: %w", path, err)
	case errors.Is(err, bolterrors.ErrInvalid), errors.Is(err, bolterrors.ErrVersionMismatch), errors.Is(err, bolterrors.ErrChecksum):
		return fmt.Errorf("open bolt store %s: the file is not a bolt database or is damaged: restore it from a backup or use another path: %w", path, err)
	}
	return fmt.Errorf("open bolt store %s: %w", path, err)
}

// initBuckets creates missing buckets and checks the format version.
func initBuckets(db *bolt.DB) error {
	return db.Update(func(btx *bolt.Tx) error {
		for _, name := range [][]byte{bucketMeta, bucketJobs, bucketTasks, bucketEvents, bucketLastSeq, bucketRevoked, bucketNumbers} {
			if _, err := btx.CreateBucketIfNotExists(name); err != nil {
				return fmt.Errorf("create bucket %s: %w", name, err)
			}
		}
		meta := btx.Bucket(bucketMeta)
		v := meta.Get(keyFormatVersion)
		if v == nil {
			return meta.Put(keyFormatVersion, encodeSeq(formatVersion))
		}
		version, err := decodeSeq(v)
		if err != nil {
			return fmt.Errorf("read format version: %w", err)
		}
		if version != formatVersion {
			return fmt.Errorf("file has format version %d, but this build of odrkit reads version %d: open it with the odrkit release that wrote it", version, formatVersion)
		}
		return nil
	})
}

// Update implements ondemand.Store. It returns nil only after the changes
// are committed and fsynced (unless Options.NoSync is set).
//
// Update may run fn more than once and on another goroutine. Concurrent
// Updates share one bbolt transaction, and when one of them returns an
// error, the transaction is rolled back and run again without it, which
// runs the others' fn again. fn must therefore give the same result every
// time it runs against the same data, change nothing outside tx that a
// second run would repeat wrongly, and not call methods of the Store. The
// Manager's fn, which only puts records it built beforehand, satisfies
// this. An fn that fails gets its own error back and does not make the
// others fail. An fn that panics is run again alone on the caller's
// goroutine, where the panic then surfaces.
//
// A commit that fails, for example because the disk is full, fails every
// Update that shared it.
func (s *Store) Update(ctx context.Context, fn func(tx ondemand.Tx) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	req := &request{ctx: ctx, fn: fn, done: make(chan result, 1)}

	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return fmt.Errorf("update bolt store %s: %w", s.path, ErrClosed)
	}
	s.inflight.Add(1)
	defer s.inflight.Done()
	s.queue = append(s.queue, req)
	s.mu.Unlock()

	select {
	case s.wake <- struct{}{}:
	default: // a wake-up is pending already
	}

	res := <-req.done
	if res.runAlone {
		return s.runAlone(fn)
	}
	return res.err
}

// runAlone runs fn in a bbolt transaction of its own on the caller's
// goroutine.
func (s *Store) runAlone(fn func(tx ondemand.Tx) error) error {
	var fnErr error
	err := s.db.Update(func(btx *bolt.Tx) error {
		fnErr = fn(newTx(btx, s.path))
		return fnErr
	})
	if err != nil && !errors.Is(err, fnErr) {
		return fmt.Errorf("commit to bolt store %s: %w", s.path, err)
	}
	if err == nil {
		s.commits.Add(1)
	}
	return err
}

// View implements ondemand.Store. fn runs on the caller's goroutine and
// reads a snapshot that Updates committed meanwhile do not change.
func (s *Store) View(ctx context.Context, fn func(tx ondemand.ReadTx) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return fmt.Errorf("view bolt store %s: %w", s.path, ErrClosed)
	}
	s.inflight.Add(1)
	defer s.inflight.Done()
	s.mu.Unlock()

	var fnErr error
	err := s.db.View(func(btx *bolt.Tx) error {
		fnErr = fn(readOnlyTx{newTx(btx, s.path)})
		return fnErr
	})
	if err != nil && !errors.Is(err, fnErr) {
		return fmt.Errorf("view bolt store %s: %w", s.path, err)
	}
	return err
}

// Close waits for running Updates and Views, stops the committer and
// closes the file, which releases its lock. Later calls return nil.
func (s *Store) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	s.mu.Unlock()

	s.inflight.Wait()
	close(s.stop)
	<-s.committerDone

	if err := s.db.Close(); err != nil {
		return fmt.Errorf("close bolt store %s: %w", s.path, err)
	}
	s.logger.Info("bolt store closed", "path", s.path)
	return nil
}

// runCommitter commits queued Updates in batches until Close.
func (s *Store) runCommitter() {
	defer close(s.committerDone)
	for {
		select {
		case <-s.wake:
			s.commitQueued()
		case <-s.stop:
			// Close waited for every Update, so the queue is empty; commit
			// anyway rather than strand a caller if that ever changes.
			s.commitQueued()
			return
		}
	}
}

// commitQueued commits batches until the queue is empty.
func (s *Store) commitQueued() {
	for {
		batch := s.takeQueued(s.maxBatch)
		if len(batch) == 0 {
			return
		}
		if s.batchDelay > 0 && len(batch) < s.maxBatch {
			batch = s.gather(batch)
		}
		s.commitBatch(batch)
	}
}

// gather adds Updates that arrive within MaxBatchDelay to batch, until it
// is full.
func (s *Store) gather(batch []*request) []*request {
	timer := time.NewTimer(s.batchDelay)
	defer timer.Stop()
	for len(batch) < s.maxBatch {
		select {
		case <-s.wake:
		case <-timer.C:
			return append(batch, s.takeQueued(s.maxBatch-len(batch))...)
		case <-s.stop:
			return append(batch, s.takeQueued(s.maxBatch-len(batch))...)
		}
		batch = append(batch, s.takeQueued(s.maxBatch-len(batch))...)
	}
	return batch
}

// takeQueued removes up to n requests from the front of the queue.
func (s *Store) takeQueued(n int) []*request {
	s.mu.Lock()
	defer s.mu.Unlock()
	n = min(n, len(s.queue))
	batch := slices.Clone(s.queue[:n])
	clear(s.queue[:n])
	s.queue = s.queue[n:]
	return batch
}

// commitBatch runs the requests' fns one after another in one bbolt
// transaction and commits it. When an fn fails, the transaction is rolled
// back, that request gets its error, and the others run again without it.
func (s *Store) commitBatch(batch []*request) {
	live := batch[:0]
	for _, req := range batch {
		if err := req.ctx.Err(); err != nil {
			req.done <- result{err: err}
			continue
		}
		live = append(live, req)
	}

	for len(live) > 0 {
		failed := -1
		var failure result
		err := s.db.Update(func(btx *bolt.Tx) error {
			for i, req := range live {
				res := callFn(req.fn, newTx(btx, s.path))
				if res.err != nil || res.runAlone {
					failed, failure = i, res
					return errBatchMemberFailed
				}
			}
			return nil
		})

		if failed >= 0 {
			live[failed].done <- failure
			live = slices.Delete(live, failed, failed+1)
			continue
		}

		if err != nil {
			err = fmt.Errorf("commit to bolt store %s: %w", s.path, err)
		} else {
			s.commits.Add(1)
		}
		for _, req := range live {
			req.done <- result{err: err}
		}
		return
	}
}

// errBatchMemberFailed rolls back a shared transaction; callers never see
// it.
var errBatchMemberFailed = errors.New("an update in the batch failed")

// callFn runs fn and turns a panic into a request to run fn alone.
func callFn(fn func(ondemand.Tx) error, tx ondemand.Tx) (res result) {
	defer func() {
		if recover() != nil {
			res = result{runAlone: true}
		}
	}()
	return result{err: fn(tx)}
}
