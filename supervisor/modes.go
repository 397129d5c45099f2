package supervisor

import (
	"time"

	"github.com/ndlb/ndlb/admin"
	"github.com/ndlb/ndlb/dispatch"
	"github.com/ndlb/ndlb/ndjson"
	"github.com/ndlb/ndlb/passthrough"
	"github.com/ndlb/ndlb/spool"
)

// NDJSON is the line mode: ndjson.Server with Config.
type NDJSON struct{ Config ndjson.Config }

// Name is "ndjson".
func (NDJSON) Name() string { return "ndjson" }

// New makes the server; its ledger joins book under name.
func (m NDJSON) New(name string, book *dispatch.Book) (Server, error) {
	cfg := m.Config
	cfg.Name, cfg.Book = name, book
	return ndjson.New(cfg)
}

// Info shows the server's connections and the ledger of its name.
func (m NDJSON) Info(srv Server, name, addr string, book *dispatch.Book) admin.ListenerInfo {
	all := srv.(*ndjson.Server).Stats()
	st := all.Listener
	info := admin.ListenerInfo{Name: name, Addr: addr, Mode: m.Name(), Proto: m.Network(), TLS: m.Config.Listener.TLS != nil,
		Active: st.Active, Accepted: st.Accepted}
	if book != nil {
		l := book.Stats(name)
		info.Ledger = &admin.LedgerInfo{Received: l.Received, Delivered: l.Delivered, InFlight: l.InFlight, Dropped: l.Dropped, Spooled: l.Spooled, Replayed: l.Replayed}
	}
	if sc := m.Config.Spool; sc != nil {
		info.Spool = spoolInfo(sc, all)
	}
	return info
}

// spoolInfo is what the admin API shows of a listener's spool.
func spoolInfo(sc *spool.Config, st ndjson.Stats) *admin.SpoolInfo {
	sp := st.Spool
	info := &admin.SpoolInfo{Dir: sc.Dir, Open: st.SpoolOpen, MaxBytes: sc.MaxBytes,
		Bytes: sp.Bytes, Batches: sp.Records, Lines: sp.Lines, Segments: sp.Segments,
		Appends: sp.Appends, HandedOff: sp.HandedOff, Fsyncs: sp.Syncs, FsyncSeconds: sp.SyncTime.Seconds(),
		Replayed: sp.Replayed, CorruptTails: sp.CorruptTails, DroppedLines: sp.DroppedLines,
		LostLines: sp.LostLines, UnspooledLines: st.Unspooled, HeldBack: st.SpoolHeldBack,
		Errors: st.SpoolErrors + sp.SyncErrors}
	info.Accepting = spoolAccepting(sc, st)
	if !sp.Oldest.IsZero() {
		info.OldestAgeSeconds = time.Since(sp.Oldest).Seconds()
	}
	switch {
	case st.SpoolLastError != "":
		info.LastError = st.SpoolLastError
	case sp.LastSyncError != nil:
		info.LastError = sp.LastSyncError.Error()
	}
	return info
}

// spoolAccepting reports whether the spool takes lines without waiting:
// it is open, its last append worked, and it has room (under its size,
// and no append waits for room) or makes room (drop-oldest).
func spoolAccepting(sc *spool.Config, st ndjson.Stats) bool {
	if !st.SpoolOpen || st.SpoolFailing {
		return false
	}
	return sc.Full == spool.DropOldest || st.Spool.Waiting == 0 && st.Spool.Bytes < sc.MaxBytes
}

// Lost is the lines read and not yet delivered.
func (NDJSON) Lost(srv Server) []any {
	q := srv.(*ndjson.Server).Stats().Queue
	return []any{"undelivered_lines", q.LinesIn - q.LinesOut}
}

// KeepAlive is Go's default: shippers' connections live for days.
func (NDJSON) KeepAlive() time.Duration { return 0 }

// Network is "udp" for a listener of datagrams, else "tcp".
func (m NDJSON) Network() string { return network(m.Config.UDP) }

func network(udp bool) string {
	if udp {
		return "udp"
	}
	return "tcp"
}

// Passthrough is the L4 mode: passthrough.Server with Config.
type Passthrough struct{ Config passthrough.Config }

// Name is "passthrough".
func (Passthrough) Name() string { return "passthrough" }

// New makes the server (a UDP one with Config.UDP); its metrics are
// labelled with name.
func (m Passthrough) New(name string, _ *dispatch.Book) (Server, error) {
	cfg := m.Config
	cfg.Name = name
	if cfg.UDP {
		return passthrough.NewUDP(cfg)
	}
	return passthrough.New(cfg)
}

// Info shows the server's connections (flows, for UDP) and policy.
func (m Passthrough) Info(srv Server, name, addr string, _ *dispatch.Book) admin.ListenerInfo {
	if s, ok := srv.(*passthrough.UDPServer); ok {
		st := s.Stats()
		return admin.ListenerInfo{Name: name, Addr: addr, Mode: m.Name(), Proto: "udp", Balance: s.Balance(),
			Active: st.ActiveFlows, Accepted: st.Flows}
	}
	s := srv.(*passthrough.Server)
	st := s.Stats().Listener
	return admin.ListenerInfo{Name: name, Addr: addr, Mode: m.Name(), Proto: "tcp", Balance: s.Balance(),
		TLS: m.Config.Listener.TLS != nil, Active: st.Active, Accepted: st.Accepted}
}

// Lost is the connections (or UDP flows) still open.
func (Passthrough) Lost(srv Server) []any {
	if s, ok := srv.(*passthrough.UDPServer); ok {
		return []any{"open_udp_flows", s.Stats().ActiveFlows}
	}
	return []any{"open_connections", srv.(*passthrough.Server).Stats().Listener.Active}
}

// Network is "udp" for a listener of datagrams, else "tcp".
func (m Passthrough) Network() string { return network(m.Config.UDP) }

// KeepAlive is off, as in HAProxy and nginx: --idle-timeout ends the
// connections of vanished clients.
func (Passthrough) KeepAlive() time.Duration { return -1 }
