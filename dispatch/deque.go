package dispatch

import "github.com/ndlb/ndlb/framer"

// deque is a growable ring of batches with pushes at both ends.
type deque struct {
	buf  []*framer.Batch
	head int
	n    int
}

func (d *deque) len() int { return d.n }

func (d *deque) grow() {
	if d.n < len(d.buf) {
		return
	}
	nb := make([]*framer.Batch, max(16, 2*len(d.buf)))
	for i := range d.n {
		nb[i] = d.buf[(d.head+i)%len(d.buf)]
	}
	d.buf, d.head = nb, 0
}

func (d *deque) pushBack(b *framer.Batch) {
	d.grow()
	d.buf[(d.head+d.n)%len(d.buf)] = b
	d.n++
}

func (d *deque) pushFront(b *framer.Batch) {
	d.grow()
	d.head = (d.head - 1 + len(d.buf)) % len(d.buf)
	d.buf[d.head] = b
	d.n++
}

func (d *deque) front() *framer.Batch { return d.buf[d.head] }

func (d *deque) popFront() *framer.Batch {
	b := d.buf[d.head]
	d.buf[d.head] = nil
	d.head = (d.head + 1) % len(d.buf)
	d.n--
	return b
}
