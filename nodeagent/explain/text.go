package explain

import (
	"fmt"
	"strings"
	"text/tabwriter"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// ANSI colours, used only when the output is a terminal.
const (
	red    = "\x1b[31m"
	green  = "\x1b[32m"
	yellow = "\x1b[33m"
	bold   = "\x1b[1m"
	reset  = "\x1b[0m"
)

// Text renders an explanation for people: a headline, the endpoints used
// and left out, and the reasons, aligned.
func Text(e *Explanation, color bool) string {
	paint := func(c, s string) string {
		if !color {
			return s
		}
		return c + s + reset
	}
	var b strings.Builder
	head := []string{paint(bold, e.Node), e.Service, fmt.Sprintf("from %s (%s)", sourceLabel(e.Query.Source), e.SourceClass),
		fmt.Sprintf("to %s %s", e.Query.Target, addrPort(e))}
	fmt.Fprintf(&b, "%s\n", strings.Join(head, "  "))
	verdict := string(e.Outcome)
	switch e.Outcome {
	case Forwarded:
		verdict = paint(green, verdict)
		if e.Masquerade {
			verdict += ", source masqueraded"
		} else {
			verdict += ", source kept"
		}
		if e.Affinity != "" {
			verdict += ", affinity " + e.Affinity
		}
	case Dropped, Refused:
		verdict = paint(red, verdict)
	default:
		verdict = paint(yellow, verdict)
	}
	fmt.Fprintf(&b, "  => %s\n", verdict)
	tw := tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
	// Writes to a strings.Builder through a tabwriter do not fail.
	line := func(format string, args ...any) { _, _ = fmt.Fprintf(tw, format, args...) }
	list := func(title string, eps []Endpoint) {
		if len(eps) == 0 {
			return
		}
		line("  %s:\n", title)
		for _, ep := range eps {
			line("    %s\t%s\t%s\n", ep.Address, orDash(ep.Node), ep.Why)
		}
	}
	list("endpoints", e.Endpoints)
	list("not used", e.Excluded)
	line("  why:\n")
	for _, r := range e.Reasons {
		line("    %s\t%s\t%s\n", r.Code, orDash(r.DecidedBy), r.Message)
	}
	_ = tw.Flush()
	if p := e.Programmed; p != nil && p.State == ModelProgrammed {
		fmt.Fprintf(&b, "  %s %s reported at %s that its kernel holds this model (%s, synced %s)\n", paint(green, "programmed:"),
			e.Node, timeOfDay(p.ReportTime), p.Model.Services, timeOfDay(&p.Reported.SyncTime))
	}
	for _, w := range e.Warnings {
		fmt.Fprintf(&b, "  %s %s\n", paint(yellow, "warning:"), w)
	}
	return b.String()
}

// timeOfDay is a report's time in UTC ("never" when unset).
func timeOfDay(t *metav1.Time) string {
	if t == nil || t.IsZero() {
		return "never"
	}
	return t.UTC().Format("15:04:05Z")
}

func sourceLabel(s Source) string {
	if s.Name != "" {
		return fmt.Sprintf("%s %s %s", s.Kind, s.Name, s.IP)
	}
	return fmt.Sprintf("%s %s", s.Kind, s.IP)
}

func addrPort(e *Explanation) string {
	if e.Query.Addr.Is6() {
		return fmt.Sprintf("[%s]:%d", e.Query.Addr, e.Query.Port)
	}
	return fmt.Sprintf("%s:%d", e.Query.Addr, e.Query.Port)
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
