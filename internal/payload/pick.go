package payload

import (
	"fmt"

	"github.com/hashicorp/consul/api"
)

// CheckEventID checks that id has the form of the IDs Consul gives user events:
// 36 characters, lowercase hexadecimal in groups of 8-4-4-4-12 separated by
// hyphens. Errors wrap ErrBadPayload.
//
// Consul makes the ID with hashicorp/go-uuid's GenerateUUID (agent/user_event.go,
// UserEvent), whose FormatUUID prints 16 random bytes with "%x-%x-%x-%x-%x":
// lowercase, and without the RFC 4122 version and variant bits, so those are not
// checked. The ID matters twice. The handlers keep it as a KV key segment
// (rehydrate/<cluster>/events/<id>), where a "/" or ".." would name another key.
// And Consul turns an event's ID into a blocking index by slicing it and parsing
// the pieces as hex, panicking on anything else: the agent for /v1/event/list
// (uuidToUint64 in agent/event_endpoint.go) and the event watch the handlers run
// under (api/watch/funcs.go calls (*api.Event).IDToIndex), so an event with any
// other ID breaks the event list that watches read.
func CheckEventID(id string) error {
	if len(id) != 36 {
		return mark(fmt.Errorf("event ID %q is not a UUID: %d bytes, want 36", id, len(id)))
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		switch i {
		case 8, 13, 18, 23:
			if c != '-' {
				return mark(fmt.Errorf("event ID %q is not a UUID: byte %d is %q, want '-'", id, i, c))
			}
		default:
			if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
				return mark(fmt.Errorf("event ID %q is not a UUID: byte %d is %q, want a lowercase hex digit", id, i, c))
			}
		}
	}
	return nil
}

// NewContinuePayload returns the payload of a continuation, {"continue":true}:
// what the handlers fire to have some handler take the next step of the roll in
// progress. It requests nothing, so it never outweighs a request (see Pick).
func NewContinuePayload() []byte { return []byte(`{"continue":true}`) }

// Picked is the event of a watch's batch that a handler acts on.
type Picked struct {
	Event   *api.UserEvent
	Request Request
}

// Refused is a malformed event of a batch and why it was refused.
type Refused struct {
	Event *api.UserEvent // nil if the batch held a null event
	Err   error          // wraps ErrBadPayload
}

// Pick chooses the event a handler acts on from an event watch's batch, which
// holds the agent's new events in its buffer's order, oldest first (on its first
// run the watch hands over the whole buffer). The roll is level-triggered, so
// one event is enough: the newest well-formed event that requests something (an
// image, or a roll to the newest allowed one) wins over older requests; a
// continuation wins only when no event of the batch requests anything. So a
// continuation that the handlers fired after an operator's request, and that
// arrived in the same batch, does not cancel the request: the request's roll is
// the one to continue, and a roll in progress takes its next step for any
// event it accepts.
//
// Every malformed event (bad ID, other name, bad payload; see ParseRequest) is
// refused with an error of its own, wrapping ErrBadPayload, and does not hide a
// good one: events fired through different servers may reach this agent in any
// order. ok is false when no event is well-formed.
func Pick(events []*api.UserEvent, name string) (picked Picked, ok bool, refused []Refused) {
	for _, ev := range events {
		req, err := ParseRequest(ev, name)
		if err != nil {
			refused = append(refused, Refused{Event: ev, Err: err})
			continue
		}
		if ok && picked.Request.Requests() && !req.Requests() {
			continue // a continuation never outweighs a request
		}
		picked, ok = Picked{Event: ev, Request: req}, true
	}
	return picked, ok, refused
}
