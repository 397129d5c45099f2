module github.com/ndlb/ndlb

go 1.26.8
