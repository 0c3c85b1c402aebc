// Package bench compares kpo with upstream kube-proxy side by side: one API
// server, one data set, each proxy started in its own node namespace with the
// same mode and sync periods, and the same measurements taken of both (cold
// sync, one partial sync, memory, CPU, rules). The benchmarks are in the test
// files; see docs/kube-proxy-comparison.md for how to run them and the figures.
package bench
