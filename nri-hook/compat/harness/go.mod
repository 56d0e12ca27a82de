module github.com/vmnic/vmnic/nri-hook/compat/harness

go 1.24

require golang.org/x/sys v0.30.0
