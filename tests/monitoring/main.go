package main

import (
	"fmt"

	"github.com/prometheus/prometheus/promql/parser"
)

func main() {
	_, err := parser.ParseExpr("up")
	fmt.Println(err)
}
