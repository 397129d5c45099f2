//go:build !linux

package linetest

import "errors"

// unreadBytes is not measured off Linux; Kill then reports nothing unread.
func unreadBytes(int) (int, error) { return 0, errors.ErrUnsupported }
