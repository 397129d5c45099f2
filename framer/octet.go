package framer

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"strconv"
	"sync"
)

// Framing names how messages are delimited on a stream.
type Framing string

// The framings.
const (
	// Newline: each message ends with '\n' (NDJSON, syslog's
	// non-transparent framing).
	Newline Framing = "newline"
	// OctetCounted: each message is "LEN SP MSG" (RFC 6587 octet
	// counting), so a message may hold newlines (a stack trace).
	OctetCounted Framing = "octet-counted"
)

// ErrBadFrame is wrapped by the error of an octet-counted stream whose
// length prefix is not a decimal number followed by a space: nothing after
// it can be framed.
var ErrBadFrame = errors.New("bad octet-counted frame")

// maxLenDigits bounds a length prefix: 1 GiB, MaxMaxLineBytes, has 10.
const maxLenDigits = 10

// OctetReader turns an octet-counted stream (RFC 6587: "LEN SP MSG", LEN a
// decimal without leading zeros; 0 is taken for an empty message) into
// lines for a Framer, each message followed by '\n'. Message bytes are
// passed on as they arrive, so the framer holds a message in progress as a
// partial line: charged to its Budget, timed by its IdleSince, dropped as
// incomplete if the stream ends inside it. Newlines inside a message are
// escaped by one of two rules:
//
//   - Reversible false (the targets take lines): one '\n' ending the
//     message is dropped, as senders often add one; any other is written
//     "#012", as rsyslog writes control characters. Nothing else changes.
//   - Reversible true (the targets take octet-counted frames again, see
//     EncodeOctet): '\' is written `\\` and '\n' `\n`, which EncodeOctet
//     undoes, so every message reaches the targets byte for byte.
//
// The framer's MaxLineBytes applies to the escaped line. A message whose
// length prefix already exceeds the limit (without Reversible, by more
// than the one byte of a newline ending it, which is dropped) is skipped
// as it arrives, never buffered, and reported to OnOversize. A bad length prefix ends the stream
// with an error wrapping ErrBadFrame, after every whole message before it.
//
// When the source is a BufferReader, OctetReader is one too: an idle
// stream then holds no buffer, neither the framer's nor its own.
type OctetReader struct {
	// OnOversize, if set, is called with the length of each message
	// skipped for being longer than the limit.
	OnOversize func(n int)
	// Final, if set, replaces the source's reads: the last reads of a
	// stream cut off at a deadline.
	Final func(p []byte) (int, error)

	src        io.Reader
	bsrc       BufferReader // src, when it is one
	readBytes  int
	max        int
	reversible bool
	in         []byte // read buffer, held only while it has unparsed bytes
	pend       []byte // in[...]: read, not yet parsed

	hdr     []byte // digits of a length prefix split across reads
	left    int    // bytes of the current message still to come
	inMsg   bool   // the current message's prefix is parsed
	skip    bool   // the current message is oversize: skipped
	heldNL  bool   // a '\n' held back: it may end the message (non-reversible)
	carry   []byte // the rest of an escape cut by a full buffer
	needEnd bool   // the message is over; its '\n' is still to be written
	sent    bool   // some of the current message was passed on
	cut     bool   // the stream ended inside a frame (marker given)
	bad     error  // a bad prefix's error, after what came before it
	getInFn func() []byte
	putInFn func()
	// The framer's get and put, during a ReadBuffer: the reader's own
	// buffer is taken only with the framer's room, so that it reads only
	// what the budget has made room for (starved: it had none).
	fget    func() []byte
	fput    func()
	starved bool
	err     error // the source's, once pend is spent
}

// NewOctetReader reads octet-counted frames from r in reads of readBytes;
// messages longer than maxBytes are skipped.
func NewOctetReader(r io.Reader, readBytes, maxBytes int, reversible bool) *OctetReader {
	o := &OctetReader{src: r, readBytes: readBytes, max: maxBytes, reversible: reversible}
	o.bsrc, _ = r.(BufferReader)
	o.getInFn, o.putInFn = o.getIn, o.putIn // bound once: a method value allocates
	return o
}

var _ BufferReader = (*OctetReader)(nil)

// Read implements io.Reader.
func (o *OctetReader) Read(p []byte) (int, error) {
	for {
		if n := o.produce(p); n > 0 {
			return n, nil
		}
		if err := o.stop(); err != nil {
			if n := o.marker(p); n > 0 {
				return n, nil
			}
			if o.Final != nil && o.in != nil { // the last read: its buffer goes back
				b := o.in
				finalBufs.Put(&b)
				o.in, o.pend = nil, nil
			}
			return 0, err
		}
		o.fill()
	}
}

// ReadBuffer implements BufferReader: it takes the framer's buffer only
// when it has something to write into it, and reads its source only while
// the framer has room (an idle reader holds no buffer; one whose framer
// waits for memory holds none of its own either).
func (o *OctetReader) ReadBuffer(get func() []byte, put func()) (int, error) {
	o.fget, o.fput = get, put
	defer func() { o.fget, o.fput = nil, nil }()
	for {
		if o.ready() {
			p := get()
			if p == nil {
				return 0, nil // no room: the framer waits, the bytes wait here
			}
			if n := o.produce(p); n > 0 {
				return n, nil
			}
			if n := o.marker(p); n > 0 {
				return n, nil
			}
			put()
			if err := o.stop(); err != nil {
				return 0, err
			}
			if len(o.pend) > 0 || o.needEnd || len(o.carry) > 0 {
				continue
			}
		}
		if err := o.stop(); err != nil {
			return 0, err
		}
		put() // waiting: the framer keeps only its partial line
		o.fill()
		if o.starved {
			o.starved = false
			return 0, nil // no room to read into: the framer waits for memory
		}
	}
}

// ready reports whether produce or marker may write something.
func (o *OctetReader) ready() bool {
	return len(o.pend) > 0 || o.needEnd || len(o.carry) > 0 || o.ended() && o.midFrame() && !o.cut && !o.sent
}

// ended reports whether the source's stream ended (or failed): not a
// suspension (ErrSuspend), after which it goes on, here or elsewhere.
func (o *OctetReader) ended() bool { return o.err != nil && !errors.Is(o.err, ErrSuspend) }

func (o *OctetReader) midFrame() bool { return o.inMsg && !o.skip || len(o.hdr) > 0 }

// stop is the error to end with once everything read is written: a bad
// prefix's, or the source's (a clean EOF only between frames).
func (o *OctetReader) stop() error {
	if len(o.pend) > 0 || o.needEnd || len(o.carry) > 0 {
		return nil
	}
	if o.bad != nil {
		return o.bad
	}
	if o.err == nil {
		return nil
	}
	if errors.Is(o.err, io.EOF) && o.midFrame() {
		return io.ErrUnexpectedEOF
	}
	return o.err
}

// marker writes one byte for a stream cut inside a frame of which nothing
// was passed on, so that the framer has a fragment to count as incomplete.
func (o *OctetReader) marker(p []byte) int {
	if !o.ended() || o.cut || !o.midFrame() || o.sent || len(p) == 0 || len(o.pend) > 0 || len(o.carry) > 0 {
		return 0
	}
	o.cut = true
	p[0] = '#'
	return 1
}

// Rewind is for a stream whose source suspended it (ErrSuspend, which
// the framer passed on: a hand-over). It rebuilds the stream from the
// start of the frame in progress, so that a fresh OctetReader that reads
// raw first, then the rest of the stream, passes on what this one would
// have. partial is the framer's unfinished line (Framer.Carry); discarding
// says the framer was dropping it as too long. skip is the number of the
// stream's next bytes to skip instead (Skip), for a message being dropped;
// raw is then empty. The reader is left between frames, reading on from
// its source.
//
// The frame is rebuilt as the client sent it, whichever rule escaped it
// (see unescapeNewlines for the one exception), so that a reader with the
// other rule (the targets' framing changed) frames it by its own.
func (o *OctetReader) Rewind(partial []byte, discarding bool) (raw []byte, skip int) {
	switch {
	case o.inMsg && (o.skip || discarding):
		skip = o.left
	case o.inMsg:
		esc := append(append([]byte(nil), partial...), o.carry...)
		var msg []byte
		if o.reversible {
			msg = UnescapeOctet(nil, esc)
		} else {
			msg = o.unescapeNewlines(esc)
		}
		raw = strconv.AppendInt(nil, int64(len(msg)+o.left), 10)
		raw = append(append(raw, ' '), msg...)
	default:
		raw = append(raw, o.hdr...)
	}
	raw = append(raw, o.pend...)
	if o.in != nil && o.bsrc != nil {
		o.putIn()
	}
	o.pend, o.hdr, o.carry = nil, o.hdr[:0], o.carry[:0]
	o.left, o.inMsg, o.skip, o.heldNL, o.needEnd, o.sent, o.cut, o.err = 0, false, false, false, false, false, false, nil
	return raw, skip
}

// unescapeNewlines returns esc, the current message as passed on (without
// Reversible), with the newlines it held: those written "#012", and one
// held back. A "#012" the client sent comes back as a newline too: a
// reader with the same rule writes it "#012" again, one with the other
// (the targets' framing changed since) gives that one message a newline
// where the client sent "#012".
func (o *OctetReader) unescapeNewlines(esc []byte) []byte {
	msg := bytes.ReplaceAll(esc, []byte("#012"), []byte{'\n'})
	if o.heldNL {
		msg = append(msg, '\n')
	}
	return msg
}

// Skip makes the stream start inside a message being dropped, whose next
// n bytes are skipped (Rewind's skip, on the reader that resumes the
// stream). It counts nothing: the message was counted when it began.
func (o *OctetReader) Skip(n int) {
	if n > 0 {
		o.inMsg, o.skip, o.left = true, true, n
	}
}

// fill reads the next bytes from the source.
func (o *OctetReader) fill() {
	var n int
	var err error
	switch {
	case o.Final != nil:
		// The final reads count what a client's socket holds as the
		// process stops, one client after another: a small buffer,
		// shared through a pool, so that thousands of clients stopped
		// while waiting for memory do not each take a read's worth.
		if o.in == nil {
			if b, ok := finalBufs.Get().(*[]byte); ok {
				o.in = *b
			} else {
				o.in = make([]byte, finalReadBytes)
			}
		}
		n, err = o.Final(o.in)
	case o.bsrc != nil:
		n, err = o.bsrc.ReadBuffer(o.getInFn, o.putInFn)
		if n == 0 && err == nil {
			return
		}
	default:
		if o.in == nil {
			o.in = make([]byte, o.readBytes)
		}
		n, err = o.src.Read(o.in)
	}
	o.pend = o.in[:n]
	if err != nil {
		o.err = err
	}
}

// getIn is the read buffer lent to the source: nil when the framer has no
// room (the budget is spent), so that the source does not read.
func (o *OctetReader) getIn() []byte {
	if o.fget != nil && o.fget() == nil {
		o.starved = true
		if o.in != nil { // kept from the last read (pend is empty): not while waiting
			b := o.in
			readBufs.Put(&b)
			o.in, o.pend = nil, nil
		}
		return nil
	}
	if o.in == nil {
		if b, ok := readBufs.Get().(*[]byte); ok && cap(*b) >= o.readBytes {
			o.in = (*b)[:o.readBytes]
		} else {
			o.in = make([]byte, o.readBytes)
		}
	}
	return o.in
}

// putIn lets the read buffer go while the source waits (pend is empty),
// and the framer's room with it.
func (o *OctetReader) putIn() {
	if o.in != nil {
		b := o.in
		readBufs.Put(&b)
	}
	o.in, o.pend = nil, nil
	if o.fput != nil {
		o.fput()
	}
}

// readBufs are read buffers that idle octet-counted readers gave back.
var readBufs sync.Pool

// finalBufs are the buffers of final reads (Final), finalReadBytes each.
var finalBufs sync.Pool

// finalReadBytes is the size of a final read.
const finalReadBytes = 16 << 10

// produce writes into p what pend holds, as far as p has room.
func (o *OctetReader) produce(p []byte) int {
	n := 0
	for n < len(p) {
		if len(o.carry) > 0 {
			k := copy(p[n:], o.carry)
			n += k
			o.carry = o.carry[:copy(o.carry, o.carry[k:])]
			continue
		}
		if o.needEnd {
			p[n] = '\n'
			n++
			o.needEnd, o.inMsg, o.skip, o.heldNL, o.sent = false, false, false, false, false
			continue
		}
		if len(o.pend) == 0 || o.bad != nil {
			break
		}
		if !o.inMsg {
			o.prefix()
			if !o.inMsg {
				continue // a bad prefix, or one that goes on in the next read
			}
			o.needEnd = o.left == 0 && !o.skip
			continue
		}
		take := min(o.left, len(o.pend))
		if o.skip {
			o.pend, o.left = o.pend[take:], o.left-take
			if o.left == 0 {
				o.inMsg, o.skip = false, false
			}
			continue
		}
		w, used := o.escape(p[n:], o.pend[:take])
		n += w
		o.pend, o.left = o.pend[used:], o.left-used
		if w > 0 {
			o.sent = true // the framer holds some of the message
		}
		if o.left == 0 {
			o.heldNL = false // a '\n' that ends the message is dropped
			o.needEnd = true
			continue
		}
		if used < take {
			break // p is full
		}
	}
	return n
}

// escape writes msg's bytes into p by the reader's rule, as far as p has
// room, and returns what it wrote and used. An escape that does not fit
// whole is cut: its rest waits in carry for the next call.
func (o *OctetReader) escape(p, msg []byte) (w, used int) {
	nl, bs := -2, -2 // reversible: where the next '\n' and '\\' are in msg, -1 for none; -2 not looked for
	for used < len(msg) && w < len(p) {
		if !o.heldNL {
			// A run of bytes that need no escape goes at once.
			room := min(len(msg), used+len(p)-w)
			var i int
			if o.reversible {
				// Each byte is looked for again only once passed.
				if nl != -1 && nl < used {
					nl = indexFrom(msg, used, '\n')
				}
				if bs != -1 && bs < used {
					bs = indexFrom(msg, used, '\\')
				}
				end := room
				if nl >= 0 {
					end = min(end, nl)
				}
				if bs >= 0 {
					end = min(end, bs)
				}
				i = end - used
			} else if i = bytes.IndexByte(msg[used:room], '\n'); i < 0 {
				i = room - used
			}
			if i > 0 {
				copy(p[w:], msg[used:used+i])
				w, used = w+i, used+i
				continue
			}
		}
		var e [5]byte
		k := 0
		c := msg[used]
		switch {
		case o.reversible && c == '\\':
			e[0], e[1], k = '\\', '\\', 2
		case o.reversible && c == '\n':
			e[0], e[1], k = '\\', 'n', 2
		case o.reversible:
			e[0], k = c, 1
		default:
			if o.heldNL {
				k = copy(e[:], "#012")
				o.heldNL = false
			}
			if c == '\n' {
				o.heldNL = true // written when a byte follows; dropped at the end
			} else {
				e[k] = c
				k++
			}
		}
		used++
		n := copy(p[w:], e[:k])
		w += n
		o.carry = append(o.carry[:0], e[n:k]...)
	}
	return w, used
}

// indexFrom is the index of the first c in b at or after from, or -1.
func indexFrom(b []byte, from int, c byte) int {
	if i := bytes.IndexByte(b[from:], c); i >= 0 {
		return from + i
	}
	return -1
}

// prefix reads a length prefix from pend; it sets inMsg once its space is
// read, or bad.
func (o *OctetReader) prefix() {
	for len(o.pend) > 0 {
		c := o.pend[0]
		switch {
		case c >= '0' && c <= '9' && !(len(o.hdr) == 1 && o.hdr[0] == '0') && len(o.hdr) < maxLenDigits:
			// No leading zeros; "0 " (an empty message) is taken,
			// though RFC 6587 has none.
			o.hdr = append(o.hdr, c)
			o.pend = o.pend[1:]
		case c == ' ' && len(o.hdr) > 0:
			o.pend = o.pend[1:]
			n, err := strconv.Atoi(string(o.hdr))
			o.hdr = o.hdr[:0]
			if err != nil {
				o.setBad()
				return
			}
			o.left, o.inMsg = n, true
			if n > o.max+o.endSpare() {
				o.skip = true
				if o.OnOversize != nil {
					o.OnOversize(n)
				}
			}
			return
		default:
			o.setBad()
			return
		}
	}
}

// endSpare is what a message may exceed the limit by and still make a
// line within it: the newline ending it, which is dropped (without
// Reversible).
func (o *OctetReader) endSpare() int {
	if o.reversible {
		return 0
	}
	return 1
}

// setBad ends the stream at a bad prefix, keeping what it began with.
func (o *OctetReader) setBad() {
	seen := append(o.hdr, o.pend[:min(len(o.pend), 16)]...)
	o.bad = fmt.Errorf("%w: expected LENGTH SPACE, got %q", ErrBadFrame, seen)
	o.pend, o.hdr = nil, nil
}

// EncodeOctet appends to dst, as octet-counted frames, the lines of data
// (whole lines, each ending in '\n', as a Batch holds them). With
// reversible, the escapes of a reversible OctetReader are undone, so each
// frame is the message as the client framed it; without, each line is a
// message as it is (a client that sent lines).
func EncodeOctet(dst, data []byte, reversible bool) []byte {
	for len(data) > 0 {
		i := bytes.IndexByte(data, '\n')
		if i < 0 {
			i = len(data) // cannot happen: batches hold whole lines
		}
		line := data[:i]
		data = data[min(i+1, len(data)):]
		if !reversible || bytes.IndexByte(line, '\\') < 0 {
			dst = strconv.AppendInt(dst, int64(len(line)), 10)
			dst = append(append(dst, ' '), line...)
			continue
		}
		n := 0
		for j := 0; j < len(line); j++ {
			if line[j] == '\\' {
				j++ // an escape: two bytes for one
			}
			n++
		}
		dst = strconv.AppendInt(dst, int64(n), 10)
		dst = append(dst, ' ')
		dst = UnescapeOctet(dst, line)
	}
	return dst
}

// UnescapeOctet appends to dst the message a reversible OctetReader
// escaped into line (one line, without its newline): `\\` becomes '\' and
// `\n` a newline. Routing takes a message's key from it.
func UnescapeOctet(dst, line []byte) []byte {
	for len(line) > 0 {
		j := bytes.IndexByte(line, '\\')
		if j < 0 || j+1 >= len(line) {
			return append(dst, line...)
		}
		dst = append(dst, line[:j]...)
		if line[j+1] == 'n' {
			dst = append(dst, '\n')
		} else {
			dst = append(dst, line[j+1])
		}
		line = line[j+2:]
	}
	return dst
}
