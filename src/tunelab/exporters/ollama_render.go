// Renders an Ollama TEMPLATE with Go's text/template (the engine Ollama uses) for the
// messages read as JSON from stdin: {"template": "...", "system": "...", "messages": [...]}.
// As Ollama does, a Modelfile SYSTEM is put first when the messages have no system turn.
package main

import (
	"encoding/json"
	"fmt"
	"os"
	"text/template"
)

type Message struct {
	Role    string `json:"role"`
	Content string `json:"content"`
}

type Values struct {
	Messages []Message
	System   string
	Prompt   string
	Response string
}

func main() {
	var input struct {
		Template string    `json:"template"`
		System   string    `json:"system"`
		Messages []Message `json:"messages"`
	}
	if err := json.NewDecoder(os.Stdin).Decode(&input); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	messages := input.Messages
	if input.System != "" && (len(messages) == 0 || messages[0].Role != "system") {
		messages = append([]Message{{Role: "system", Content: input.System}}, messages...)
	}
	parsed, err := template.New("ollama").Parse(input.Template)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(3)
	}
	if err := parsed.Execute(os.Stdout, Values{Messages: messages, System: input.System}); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(4)
	}
}
