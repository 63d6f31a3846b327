package main

import "runtime"

// goarch is the image architecture: the lab runs images on this machine.
func goarch() string { return runtime.GOARCH }
