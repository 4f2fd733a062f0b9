package boltstore

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"slices"
	"unicode/utf8"

	bolt "go.etcd.io/bbolt"

	"github.com/odrkit/odrkit/ondemand"
)

var (
	bucketMeta    = []byte("meta")
	bucketJobs    = []byte("jobs")
	bucketTasks   = []byte("tasks")
	bucketEvents  = []byte("events")
	bucketLastSeq = []byte("event_last_seq")
	bucketRevoked = []byte("revocations")
	// bucketNumbers maps a job ID to the number its events are keyed by.
	bucketNumbers = []byte("job_numbers")

	keyFormatVersion = []byte("format_version")
)

// tx implements ondemand.Tx on a bbolt transaction. One tx serves one run
// of one fn.
type tx struct {
	btx  *bolt.Tx
	path string
	// writes counts puts, so that an iteration notices that fn wrote and
	// repositions its cursor, which bbolt requires after a write.
	writes int
}

func newTx(btx *bolt.Tx, path string) *tx {
	return &tx{btx: btx, path: path}
}

// readOnlyTx hides the write methods of a tx from View's fn.
type readOnlyTx struct {
	ondemand.ReadTx
}

func (t *tx) Job(id string) (*ondemand.Job, error) {
	v := t.btx.Bucket(bucketJobs).Get([]byte(id))
	if v == nil {
		return nil, fmt.Errorf("job %q: %w", id, ondemand.ErrNotFound)
	}
	return t.decodeJob(id, v)
}

func (t *tx) Task(id string) (*ondemand.Task, error) {
	v := t.btx.Bucket(bucketTasks).Get([]byte(id))
	if v == nil {
		return nil, fmt.Errorf("task %q: %w", id, ondemand.ErrNotFound)
	}
	return t.decodeTask(id, v)
}

func (t *tx) ForEachJob(fn func(*ondemand.Job) bool) error {
	return t.iterate(bucketJobs, nil, func(k, v []byte) (bool, error) {
		j, err := t.decodeJob(string(k), v)
		if err != nil {
			return false, err
		}
		return fn(j), nil
	})
}

func (t *tx) ForEachTask(fn func(*ondemand.Task) bool) error {
	return t.iterate(bucketTasks, nil, func(k, v []byte) (bool, error) {
		task, err := t.decodeTask(string(k), v)
		if err != nil {
			return false, err
		}
		return fn(task), nil
	})
}

func (t *tx) ForEachRevocation(fn func(ondemand.Revocation) bool) error {
	return t.iterate(bucketRevoked, nil, func(k, v []byte) (bool, error) {
		var r ondemand.Revocation
		if err := json.Unmarshal(v, &r); err != nil {
			return false, fmt.Errorf("decode revocation of runner %q in %s: %w", k, t.path, err)
		}
		return fn(r), nil
	})
}

func (t *tx) PutRevocation(r ondemand.Revocation) error {
	if err := checkID("put revocation", "Revocation.RunnerID", r.RunnerID); err != nil {
		return err
	}
	v, err := json.Marshal(r)
	if err != nil {
		return fmt.Errorf("put revocation %q: encode: %w", r.RunnerID, err)
	}
	if err := t.btx.Bucket(bucketRevoked).Put([]byte(r.RunnerID), v); err != nil {
		return fmt.Errorf("put revocation %q: %w", r.RunnerID, err)
	}
	t.writes++
	return nil
}

func (t *tx) Events(jobID string, after int64, fn func(ondemand.Event) bool) error {
	number := t.btx.Bucket(bucketNumbers).Get([]byte(jobID))
	if number == nil {
		return nil
	}
	start := binary.BigEndian.AppendUint64(slices.Clone(number), uint64(max(after, 0)+1))
	return t.iterate(bucketEvents, start, func(k, v []byte) (bool, error) {
		if !bytes.HasPrefix(k, number) {
			return false, nil
		}
		var e ondemand.Event
		if err := json.Unmarshal(v, &e); err != nil {
			return false, fmt.Errorf("decode event %d of job %q in %s: %w", binary.BigEndian.Uint64(k[len(number):]), jobID, t.path, err)
		}
		return fn(e), nil
	})
}

// iterate calls visit with each key and value of bucket from start (nil:
// the first key) until visit returns false or an error. visit may write
// to the bucket: the cursor then seeks back to the last key it visited, so
// replaced records are not visited twice.
func (t *tx) iterate(bucket, start []byte, visit func(k, v []byte) (bool, error)) error {
	c := t.btx.Bucket(bucket).Cursor()
	var k, v []byte
	if start == nil {
		k, v = c.First()
	} else {
		k, v = c.Seek(start)
	}
	for k != nil {
		key := bytes.Clone(k)
		writes := t.writes
		more, err := visit(key, v)
		if err != nil || !more {
			return err
		}
		if t.writes == writes {
			k, v = c.Next()
			continue
		}
		k, v = c.Seek(key)
		if k != nil && bytes.Equal(k, key) {
			k, v = c.Next()
		}
	}
	return nil
}

func (t *tx) PutJob(j *ondemand.Job) error {
	if j == nil {
		return fmt.Errorf("put job: the job is nil: pass a *Job")
	}
	if err := checkID("put job", "Job.ID", j.ID); err != nil {
		return err
	}
	v, err := json.Marshal(j)
	if err != nil {
		return fmt.Errorf("put job %q: encode: %w", j.ID, err)
	}
	if err := t.btx.Bucket(bucketJobs).Put([]byte(j.ID), v); err != nil {
		return fmt.Errorf("put job %q: %w", j.ID, err)
	}
	t.writes++
	return nil
}

func (t *tx) PutTask(task *ondemand.Task) error {
	if task == nil {
		return fmt.Errorf("put task: the task is nil: pass a *Task")
	}
	if err := checkID("put task", "Task.ID", task.ID); err != nil {
		return err
	}
	v, err := json.Marshal(task)
	if err != nil {
		return fmt.Errorf("put task %q: encode: %w", task.ID, err)
	}
	if err := t.btx.Bucket(bucketTasks).Put([]byte(task.ID), v); err != nil {
		return fmt.Errorf("put task %q: %w", task.ID, err)
	}
	t.writes++
	return nil
}

func (t *tx) AppendEvent(e ondemand.Event) error {
	if err := checkID("append event", "Event.JobID", e.JobID); err != nil {
		return err
	}
	number, err := t.jobNumber(e.JobID)
	if err != nil {
		return fmt.Errorf("append event to job %q: %w", e.JobID, err)
	}
	seqs := t.btx.Bucket(bucketLastSeq)
	var last int64
	if v := seqs.Get(number); v != nil {
		if last, err = decodeSeq(v); err != nil {
			return fmt.Errorf("append event to job %q: read last sequence in %s: %w", e.JobID, t.path, err)
		}
	}
	if e.Seq != last+1 {
		return fmt.Errorf("append event to job %q: sequence %d does not follow the last stored sequence %d: use %d", e.JobID, e.Seq, last, last+1)
	}

	v, err := json.Marshal(e)
	if err != nil {
		return fmt.Errorf("append event %d to job %q: encode: %w", e.Seq, e.JobID, err)
	}
	key := binary.BigEndian.AppendUint64(slices.Clone(number), uint64(e.Seq))
	if err := t.btx.Bucket(bucketEvents).Put(key, v); err != nil {
		return fmt.Errorf("append event %d to job %q: %w", e.Seq, e.JobID, err)
	}
	if err := seqs.Put(number, encodeSeq(e.Seq)); err != nil {
		return fmt.Errorf("append event %d to job %q: store last sequence: %w", e.Seq, e.JobID, err)
	}
	t.writes++
	return nil
}

// jobNumber returns the 8-byte number that keys the job's events,
// assigning the next one on the job's first event. Numbers follow the order
// of first events, so the events of jobs created close together sit on
// neighbouring pages, however their IDs sort, and a commit that appends to
// many jobs rewrites few pages.
func (t *tx) jobNumber(jobID string) ([]byte, error) {
	numbers := t.btx.Bucket(bucketNumbers)
	if n := numbers.Get([]byte(jobID)); n != nil {
		return slices.Clone(n), nil
	}
	next, err := numbers.NextSequence()
	if err != nil {
		return nil, fmt.Errorf("assign an event key number in %s: %w", t.path, err)
	}
	n := binary.BigEndian.AppendUint64(nil, next)
	if err := numbers.Put([]byte(jobID), n); err != nil {
		return nil, fmt.Errorf("store the event key number in %s: %w", t.path, err)
	}
	return n, nil
}

// checkID rejects IDs that cannot be keys: bbolt keys must not be empty,
// and JSON would replace bytes that are not UTF-8 in the record's ID field,
// so the stored record would name another ID than its key.
func checkID(op, field, id string) error {
	if id == "" {
		return fmt.Errorf("%s: %s is empty: set it", op, field)
	}
	if !utf8.ValidString(id) {
		return fmt.Errorf("%s: %s %q is not valid UTF-8: use a UTF-8 ID", op, field, id)
	}
	return nil
}

func (t *tx) decodeJob(id string, v []byte) (*ondemand.Job, error) {
	var j ondemand.Job
	if err := json.Unmarshal(v, &j); err != nil {
		return nil, fmt.Errorf("decode job %q in %s: %w", id, t.path, err)
	}
	return &j, nil
}

func (t *tx) decodeTask(id string, v []byte) (*ondemand.Task, error) {
	var task ondemand.Task
	if err := json.Unmarshal(v, &task); err != nil {
		return nil, fmt.Errorf("decode task %q in %s: %w", id, t.path, err)
	}
	return &task, nil
}

func encodeSeq(seq int64) []byte {
	return binary.BigEndian.AppendUint64(nil, uint64(seq))
}

func decodeSeq(v []byte) (int64, error) {
	if len(v) != 8 {
		return 0, fmt.Errorf("invalid sequence value of %d bytes, want 8: the file is damaged", len(v))
	}
	return int64(binary.BigEndian.Uint64(v)), nil
}
