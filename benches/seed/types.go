package main

import "time"

// The image config types the seed's main.go refers to; they lived in a file of their own
// next to it and are not part of the seed as kept in this repository.
type Config struct {
	Created      time.Time    `json:"created"`
	Author       string       `json:"author"`
	Architecture string       `json:"architecture"`
	Os           string       `json:"os"`
	Config       *ImageConfig `json:"config"`
	RootFs       RootFs       `json:"rootfs"`
	History      []History    `json:"history"`
}

type ImageConfig struct {
	Cmd []string `json:"Cmd"`
	Env []string `json:"Env"`
}

type RootFs struct {
	DiffIds []string `json:"diff_ids"`
	Type    string   `json:"type"`
}

type History struct {
	Created   time.Time `json:"created"`
	CreatedBy string    `json:"created_by"`
}
