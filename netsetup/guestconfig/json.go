package guestconfig

import (
	"encoding/json"
	"fmt"

	"github.com/vmnic/vmnic/netsetup"
)

func renderJSON(gc *netsetup.GuestConfig) (*Output, error) {
	data, err := json.MarshalIndent(gc, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("render json: %w", err)
	}
	return &Output{Format: JSON, Files: []File{{Name: "guest-config.json", Data: append(data, '\n')}}}, nil
}
