package main

import (
	"errors"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/ndlb/ndlb/demo"
)

func demoFlags() []cli.Flag {
	return []cli.Flag{
		&cli.IntFlag{Name: "clients", Value: 4, Usage: "client connections sending lines"},
		&cli.IntFlag{Name: "lines", Value: 100000, Usage: "lines per client"},
		&cli.DurationFlag{Name: "duration", Value: 6 * time.Second, Usage: "how long the clients take to send"},
	}
}

// runDemo runs the demo (see package demo): exit 1 if a line was lost.
func runDemo(c *cli.Context) error {
	err := demo.Run(demo.Options{Clients: c.Int("clients"), Lines: c.Int("lines"), Duration: c.Duration("duration")},
		c.App.Writer, c.App.ErrWriter)
	switch {
	case err == nil:
		return nil
	case errors.Is(err, demo.ErrOptions):
		return usageError("%v", err)
	}
	return cli.Exit(err.Error(), exitError)
}
