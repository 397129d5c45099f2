package framer

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"strconv"
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
// decimal without leading zeros; 0 is taken for an empty message) into lines for a Framer, each message
// followed by '\n'. Newlines inside a message are escaped by one of two
// rules:
//
//   - Reversible false (the targets take lines): one '\n' ending the
//     message is dropped, as senders often add one; any other is written
//     "#012", as rsyslog writes control characters. Nothing else changes.
//   - Reversible true (the targets take octet-counted frames again, see
//     EncodeOctet): '\' is written `\\` and '\n' `\n`, which EncodeOctet
//     undoes, so every message reaches the targets byte for byte.
//
// A message longer than MaxBytes is skipped as it arrives, never buffered,
// and reported to OnOversize. A bad length prefix ends the stream with an
// error wrapping ErrBadFrame, after every whole message before it. A stream
// that ends inside a message ends with io.ErrUnexpectedEOF, so the framer
// drops the fragment as incomplete.
type OctetReader struct {
	// OnOversize, if set, is called with the length of each message
	// skipped for being longer than the limit.
	OnOversize func(n int)

	r          io.Reader
	max        int
	reversible bool
	in         []byte // read buffer
	pend       []byte // in[...]: read, not yet parsed
	out        []byte // lines parsed; out[outPos:] is ready for Read
	outPos     int
	msg        []byte // the message being read

	hdr   []byte // digits of a length prefix split across reads
	left  int    // bytes of the current message still to come
	inMsg bool   // the current message's prefix is parsed
	skip  bool   // the current message is oversize: skipped
	cut   bool   // the input ended inside a message (fragment given)
	err   error  // the underlying reader's, once pend is spent
}

// NewOctetReader reads octet-counted frames from r in reads of readBytes;
// messages longer than maxBytes are skipped.
func NewOctetReader(r io.Reader, readBytes, maxBytes int, reversible bool) *OctetReader {
	return &OctetReader{r: r, in: make([]byte, readBytes), max: maxBytes, reversible: reversible}
}

// Read implements io.Reader.
func (o *OctetReader) Read(p []byte) (int, error) {
	for {
		if o.outPos < len(o.out) {
			n := copy(p, o.out[o.outPos:])
			o.outPos += n
			return n, nil
		}
		o.out, o.outPos = o.out[:0], 0
		if len(o.pend) > 0 {
			if err := o.parse(); err != nil {
				if len(o.out) > 0 {
					o.err = err // after the whole messages before it
					continue
				}
				return 0, err
			}
			continue
		}
		if o.err != nil {
			if frag := o.fragment(); len(frag) > 0 {
				o.out = frag // a partial line, then the error: the framer drops it as incomplete
				continue
			}
			return 0, o.end()
		}
		m, err := o.r.Read(o.in)
		o.pend = o.in[:m]
		if err != nil {
			o.err = err
		}
	}
}

// end is the error at the end of the input: a clean EOF only between
// messages.
func (o *OctetReader) end() error {
	if errors.Is(o.err, io.EOF) && o.cut {
		return io.ErrUnexpectedEOF
	}
	return o.err
}

// fragment returns, once, what the input ended inside of: the part of a
// message that came (or, if none did, its prefix), without a newline, for
// the framer to count as an incomplete line.
func (o *OctetReader) fragment() []byte {
	if o.cut || !(o.inMsg && !o.skip || len(o.hdr) > 0) {
		return nil
	}
	o.cut = true
	frag := o.escape(o.out[:0], o.msg)
	frag = frag[:len(frag)-1] // no newline: not a line
	if len(frag) == 0 {
		frag = append(frag, o.hdr...)
		if len(frag) == 0 {
			frag = strconv.AppendInt(frag, int64(o.left), 10)
		}
	}
	o.inMsg, o.hdr, o.msg = false, o.hdr[:0], o.msg[:0]
	return frag
}

// parse moves whole messages from pend into out.
func (o *OctetReader) parse() error {
	for len(o.pend) > 0 {
		if !o.inMsg {
			if err := o.prefix(); err != nil {
				return err
			}
			if !o.inMsg {
				return nil // the prefix goes on in the next read
			}
		}
		take := min(o.left, len(o.pend))
		if !o.skip {
			o.msg = append(o.msg, o.pend[:take]...)
		}
		o.pend, o.left = o.pend[take:], o.left-take
		if o.left > 0 {
			return nil
		}
		if !o.skip {
			o.out = o.escape(o.out, o.msg)
		}
		o.inMsg, o.skip, o.msg = false, false, o.msg[:0]
	}
	return nil
}

// prefix reads a length prefix from pend; it sets inMsg once its space is
// read.
func (o *OctetReader) prefix() error {
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
				return o.bad()
			}
			o.left, o.inMsg = n, true
			if n > o.max {
				o.skip = true
				if o.OnOversize != nil {
					o.OnOversize(n)
				}
			}
			return nil
		default:
			return o.bad()
		}
	}
	return nil
}

// bad is the error of a bad prefix, showing what it began with.
func (o *OctetReader) bad() error {
	seen := append(o.hdr, o.pend[:min(len(o.pend), 16)]...)
	o.pend, o.hdr = nil, nil
	return fmt.Errorf("%w: expected LENGTH SPACE, got %q", ErrBadFrame, seen)
}

// escape appends msg and its '\n' to dst, escaped by the reader's rule.
func (o *OctetReader) escape(dst, msg []byte) []byte {
	if o.reversible {
		for {
			i := bytes.IndexAny(msg, "\\\n")
			if i < 0 {
				break
			}
			dst = append(dst, msg[:i]...)
			if msg[i] == '\n' {
				dst = append(dst, '\\', 'n')
			} else {
				dst = append(dst, '\\', '\\')
			}
			msg = msg[i+1:]
		}
		return append(append(dst, msg...), '\n')
	}
	msg = bytes.TrimSuffix(msg, []byte{'\n'})
	for {
		i := bytes.IndexByte(msg, '\n')
		if i < 0 {
			break
		}
		dst = append(append(dst, msg[:i]...), "#012"...)
		msg = msg[i+1:]
	}
	return append(append(dst, msg...), '\n')
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
		for len(line) > 0 {
			j := bytes.IndexByte(line, '\\')
			if j < 0 || j+1 >= len(line) {
				dst = append(dst, line...)
				break
			}
			dst = append(dst, line[:j]...)
			if line[j+1] == 'n' {
				dst = append(dst, '\n')
			} else {
				dst = append(dst, line[j+1])
			}
			line = line[j+2:]
		}
	}
	return dst
}
