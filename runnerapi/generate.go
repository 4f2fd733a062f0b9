package runnerapi

// Regenerates package runnerpb from the protos in proto/ with the tool
// versions pinned in the repository's Makefile.
//go:generate make -C .. generate
