package routing

import (
	"fmt"
	"math"
	"strings"
	"time"

	"github.com/droverhq/drover/pkg/apikey"
)

// anonymous is the queue of requests that name no key (auth.Anonymous).
const anonymous = "anonymous"

// PriorityHeader lets a request lower its priority class (never raise it).
const PriorityHeader = "X-Drover-Priority"

// Tenant is who a waiter acts for: an API key, its weight against the
// other keys of its class, and its priority class (apikey.Classes). The
// zero Tenant is the anonymous interactive key of weight 1.
type Tenant struct {
	ID     string
	Weight int
	Class  string
}

// TenantFor is the tenant of a request by key id, the key's weight and
// class, and the value of its X-Drover-Priority header (empty: the key's
// class). The header may lower the class, never raise it: a batch key
// asking for interactive stays batch. An unknown class is an error naming
// the header.
func TenantFor(id string, weight int, class, asked string) (Tenant, error) {
	t := Tenant{ID: id, Weight: weight, Class: class}.normal()
	asked = strings.ToLower(strings.TrimSpace(asked))
	if asked == "" {
		return t, nil
	}
	if err := apikey.ValidClass(asked); err != nil {
		return Tenant{}, fmt.Errorf("header %s: %w", PriorityHeader, err)
	}
	if classIndex(asked) > classIndex(t.Class) {
		t.Class = asked
	}
	return t, nil
}

func (t Tenant) normal() Tenant {
	if t.ID == "" {
		t.ID = anonymous
	}
	if t.Weight < 1 {
		t.Weight = 1
	}
	if t.Class == "" {
		t.Class = apikey.ClassInteractive
	}
	return t
}

// classIndex is a class's rank, 0 the highest; an unknown class ranks
// lowest.
func classIndex(c string) int {
	for i, k := range apikey.Classes {
		if k == c {
			return i
		}
	}
	if c == "" {
		return 0
	}
	return len(apikey.Classes) - 1
}

// queueID names one queue: one key in one class. A key whose requests
// come in two classes (the header lowered some) has two queues.
type queueID struct {
	id    string
	class int
}

func (t Tenant) queue() queueID { return queueID{id: t.ID, class: classIndex(t.Class)} }

// TenantLoad is one queue's load on one (backend, model) on one replica:
// what replicas share so that classes and weights hold fleet-wide.
type TenantLoad struct {
	ID       string
	Class    string
	Weight   int
	InFlight int
	Waiting  int
	// Recent is the queue's recent grants on this replica (an exponential
	// moving count, half-life RecentHalfLife); it breaks ties between
	// queues that hold equal weighted shares, so that ties rotate.
	Recent float64
	// Oldest is when the queue's oldest waiter that could use the pool
	// arrived, in Unix milliseconds (0: none waits, or not reported); the
	// plan gives the queue's next slot to the replica where it waits
	// longest, so one key's requests are served first come, first served
	// across replicas.
	Oldest int64
}

// RecentHalfLife is the half-life of TenantLoad.Recent.
const RecentHalfLife = 3 * time.Second

// decaying is a count that halves every RecentHalfLife.
type decaying struct {
	v  float64
	at time.Time
}

func (d decaying) value(now time.Time) float64 {
	if d.at.IsZero() || !now.After(d.at) {
		return d.v
	}
	return d.v * math.Exp2(-float64(now.Sub(d.at))/float64(RecentHalfLife))
}

func (d *decaying) add(now time.Time, n float64) {
	d.v = d.value(now) + n
	d.at = now
}

func className(i int) string {
	if i >= 0 && i < len(apikey.Classes) {
		return apikey.Classes[i]
	}
	return apikey.ClassInteractive
}
