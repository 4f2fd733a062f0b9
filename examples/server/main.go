package main

// placeholder: the lead engineer replaces this file with the server program.
func main() {}
