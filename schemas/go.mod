module github.com/droverhq/drover/schemas

go 1.26.8
