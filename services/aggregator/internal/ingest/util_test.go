package ingest_test

import (
	"encoding/json"

	dto "github.com/prometheus/client_model/go"
)

type dtoMetric = dto.Metric

func jsonMarshal(v any) ([]byte, error) { return json.Marshal(v) }
