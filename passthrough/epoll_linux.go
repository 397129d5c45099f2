package passthrough

import (
	"os"

	"golang.org/x/sys/unix"
)

// newEpollWake creates an epoll set and an eventfd watched in it with id 0,
// by which another goroutine cuts the set's waits short. nonblock makes the
// epoll descriptor itself non-blocking, so that os.NewFile puts it in the
// runtime's poller.
func newEpollWake(nonblock bool) (epfd, evfd int, err error) {
	epfd, err = unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return -1, -1, os.NewSyscallError("epoll_create1", err)
	}
	evfd, err = unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		unix.Close(epfd)
		return -1, -1, os.NewSyscallError("eventfd", err)
	}
	ev := unix.EpollEvent{Events: unix.EPOLLIN} // id 0: the wake-up
	err = os.NewSyscallError("epoll_ctl", unix.EpollCtl(epfd, unix.EPOLL_CTL_ADD, evfd, &ev))
	if err == nil && nonblock {
		err = os.NewSyscallError("fcntl", unix.SetNonblock(epfd, true))
	}
	if err != nil {
		unix.Close(epfd)
		unix.Close(evfd)
		return -1, -1, err
	}
	return epfd, evfd, nil
}
