// Package soak is kpo's soak test: a bounded churn run at 5,000 Services with
// the agent in nftables and in iptables mode at once, under steady TCP and UDP
// load, that samples each agent every few seconds and asserts that memory and
// goroutines stay flat, no request fails and no sync fails (TestSoak; make
// soak). This file's package holds the parts the test is made of: the churn,
// the agent readings, the least-squares fit, the kernel's service ports, the
// bounds and why they are what they are. See docs/robustness.md, "Soak".
package soak
