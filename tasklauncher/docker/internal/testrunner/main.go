// Command testrunner is the launchertest runner program that the docker
// launcher's tests put into an image. The tests build it statically
// (CGO_ENABLED=0), so that the image needs nothing but this file.
package main

import (
	"os"

	"github.com/odrkit/odrkit/tasklauncher/launchertest/testrunner"
)

func main() {
	os.Exit(testrunner.Main())
}
