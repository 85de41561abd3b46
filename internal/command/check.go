package command

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/consul-rehydrate/consul-rehydrate/internal/app"
	"github.com/consul-rehydrate/consul-rehydrate/internal/coord"
	"github.com/consul-rehydrate/consul-rehydrate/internal/printable"
	"github.com/consul-rehydrate/consul-rehydrate/internal/rollcheck"
)

// checkTimeout bounds the check's one read, below the timeout of the script check
// that runs it (consul.d/check-roll.hcl), so that a Consul that does not answer is
// reported with the check's own reason rather than the agent's "Timed out".
const checkTimeout = 5 * time.Second

// check is `rehydrate check`: a Consul script check on every server
// (consul.d/check-roll.hcl). It reads the roll record and says whether the roll is
// stuck (see package rollcheck): it exits 0 passing, 1 warning, 2 critical, as
// Consul's script checks expect, its reason on stdout and, last, the status
// command to run for the details (Consul keeps the last 4 KB of the output).
//
// It cannot judge, and is critical, when it cannot reach Consul or the token may
// not read the record (app.ExitConsul), or the record is not a roll record
// (ExitCritical); a configuration it cannot load is app.ExitConfig, said on stderr,
// which the agent keeps in the output too. An alarm nobody can see would be
// worse than a false one: every code but 0 and 1 is critical.
func (a *prog) check() int { return a.checkAt(time.Now()) }

func (a *prog) checkAt(now time.Time) int {
	out := a.env.Stdout
	hint := "details: rehydrate -config " + printable.String(a.configPath) + " status"
	cannot := func(code int, format string, args ...any) int {
		fmt.Fprintf(out, "CRITICAL: cluster %s: cannot judge the roll: %s\n%s\n", a.cfg.Cluster, printable.String(fmt.Sprintf(format, args...)), hint)
		return code
	}
	c, err := a.cliConsul()
	if err != nil {
		return cannot(app.ExitConfig, "set up the Consul client: %v", err)
	}
	ctx, cancel := withTimeout(checkTimeout)
	defer cancel()
	rec, err := coord.New(c, a.cfg.Cluster).Roll(ctx)
	var syntax *json.SyntaxError
	var typ *json.UnmarshalTypeError
	switch {
	case errors.As(err, &syntax) || errors.As(err, &typ):
		// Not what the handlers write: whoever wrote it, the roll cannot go on.
		return cannot(rollcheck.ExitCritical, "the roll record is not one: %v", err)
	case err != nil:
		return cannot(app.ExitConsul, "%v", err)
	}
	v := rollcheck.Judge(rec, now, rollcheck.Thresholds{Warning: a.cfg.Roll.StuckWarning, Critical: a.cfg.Roll.LaunchTimeout})
	fmt.Fprintf(out, "%s: cluster %s: %s\n%s\n", strings.ToUpper(string(v.Status)), a.cfg.Cluster, v.Reason, hint)
	return v.Status.ExitCode()
}
