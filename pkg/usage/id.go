package usage

import "github.com/google/uuid"

// NewID returns a UUIDv7: unique, and sortable by creation time.
func NewID() string {
	id, err := uuid.NewV7()
	if err != nil {
		// NewV7 fails only if the system random source does.
		return uuid.NewString()
	}
	return id.String()
}
