module github.com/odrkit/odrkit

go 1.26
