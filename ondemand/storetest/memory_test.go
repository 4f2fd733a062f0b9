package storetest_test

import (
	"testing"

	"go.uber.org/goleak"

	"github.com/odrkit/odrkit/ondemand"
	"github.com/odrkit/odrkit/ondemand/storetest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func TestMemoryStore(t *testing.T) {
	storetest.RunStoreTests(t, func(*testing.T) ondemand.Store {
		return ondemand.NewMemoryStore()
	})
}
