package nftables

import (
	"sigs.k8s.io/knftables"
)

// A full sync whose fixed part is a transaction of its own (Tx.FixedApart:
// the production kernel sends the service objects over netlink, see
// kernel_netlink.go) is two kernel transactions:
//
//  1. through nft, the fixed objects only: the table, its maps and sets
//     created when missing (never flushed), the hooked and fixed chains
//     flushed and their rules re-added, the cluster-CIDR and NodePort-address
//     sets rewritten. Each of these is atomic in itself, and none empties
//     anything a service uses, so traffic keeps flowing as before between
//     the two transactions (on a fresh node, empty maps translate nothing,
//     like no table at all).
//  2. over netlink, everything the services own: every other chain the
//     kernel holds flushed, the service maps and sets flushed, then the same
//     writes as the one-transaction sync (famSync.write) and the deletion of
//     what no service wants. This is where nearly all of a full sync's work
//     is, and it stays one atomic batch.
//
// Unlike writeBase, the endpoint maps are not deleted and recreated (that is
// only for nft, which cannot parse their typeof back from the kernel; the
// netlink batch does not ask nft). When the kernel refuses such a sync (for
// instance a map of an older layout with another key type), the kernel
// makes its next full sync one nft transaction again, which recreates them.

// writeBaseApart writes part 1 into tx. inKernel are the table's chains and
// sets/maps (nil for a missing table).
func writeBaseApart(tx *knftables.Transaction, fi famInfo, b *baseObjects, inKernel *staleObjects) {
	fam, tbl := fi.family, tableName
	tx.Add(&knftables.Table{Family: fam, Name: tbl, Comment: knftables.PtrTo("kpo service proxy")})
	have := map[string]bool{}
	if inKernel != nil {
		for _, s := range inKernel.sets {
			have[s] = true
		}
	}
	for _, m := range verdictMaps(fi) {
		tx.Add(&knftables.Map{Family: fam, Table: tbl, Name: m.name, Type: m.typ})
	}
	for _, m := range endpointMaps(fi) {
		// nft cannot re-declare them once they came from the kernel (writeBase).
		if !have[m.name] {
			tx.Add(&knftables.Map{Family: fam, Table: tbl, Name: m.name, TypeOf: m.typ})
		}
	}
	for _, set := range serviceSets(fi) {
		tx.Add(set)
	}
	for _, set := range fixedSets(fi) {
		tx.Add(set)
		tx.Flush(&knftables.Set{Family: fam, Table: tbl, Name: set.Name})
		for _, e := range b.sets[set.Name] {
			tx.Add(&knftables.Element{Family: fam, Table: tbl, Set: set.Name, Key: []string{e}})
		}
	}
	createFixedChains(tx, fi, b, false)
	linkBase(tx, fi, b)
}

// serviceMaps are the maps and sets whose elements the services own: part 2
// of a full sync flushes and rewrites them.
var serviceMaps = []string{mapServiceIPs, mapFirewallIPs, mapNoEndpointServices, mapServiceNodePorts,
	mapNoEndpointNodePorts, mapEndpoints, mapNodePortEndpoints, setHairpin, setClusterIPs}

// flushServiceObjects starts part 2: it flushes every chain the kernel holds
// that is not a fixed one (pick chains, chains of services; their rules go
// before anything they refer to is deleted or rewritten) and the service maps
// and sets (a full sync re-adds every element, which repairs drift without
// listing them).
func flushServiceObjects(w objWriter, fi famInfo, inKernel staleObjects) {
	for _, c := range inKernel.chains {
		if !isBase(c) {
			w.write(fi, op{kind: opFlushChain, name: c})
		}
	}
	if inKernel.chains == nil && inKernel.sets == nil {
		return // a new table: part 1 created the maps empty
	}
	for _, m := range serviceMaps {
		w.write(fi, op{kind: opFlushSet, name: m})
	}
}
