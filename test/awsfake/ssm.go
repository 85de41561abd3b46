package awsfake

import (
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// Parameter is an SSM Parameter Store parameter, as AddParameter seeds it.
type Parameter struct {
	Name  string
	Type  string // String, StringList or SecureString; empty: SecureString
	Value string
}

// AddParameter seeds a Parameter Store parameter. The fake serves GetParameter
// only: Systems Manager's AWS JSON 1.1 protocol (POST /, X-Amz-Target
// AmazonSSM.GetParameter, Content-Type application/x-amz-json-1.1; the ssm API
// model in aws-sdk-go-v2/service/ssm).
func (s *Server) AddParameter(p Parameter) {
	if p.Type == "" {
		p.Type = "SecureString"
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.params == nil {
		s.params = map[string]Parameter{}
	}
	s.params[p.Name] = p
}

type getParameterInput struct {
	Name           string `json:"Name"`
	WithDecryption bool   `json:"WithDecryption"`
}

// serveSSM answers Systems Manager's JSON protocol. Errors are
// {"__type": code, "message": …} with HTTP 400 (ParameterNotFound,
// ValidationException), as the API model's error shapes.
func (s *Server) serveSSM(w http.ResponseWriter, r *http.Request, target string, at time.Time) {
	action := strings.TrimPrefix(target, "AmazonSSM.")
	status, body := s.ssm(r, action)
	s.mu.Lock()
	s.calls = append(s.calls, Call{Action: action, Params: url.Values{"Action": {action}}, Time: at, Status: status})
	s.mu.Unlock()
	w.Header().Set("Content-Type", "application/x-amz-json-1.1")
	w.Header().Set("X-Amzn-Requestid", requestID())
	w.WriteHeader(status)
	_, _ = w.Write(body)
}

func (s *Server) ssm(r *http.Request, action string) (int, []byte) {
	fail := func(status int, code, msg string) (int, []byte) {
		b, _ := json.Marshal(map[string]string{"__type": code, "message": msg})
		return status, b
	}
	if f := s.takeFault(action); f.Code != "" {
		st := f.Status
		if st == 0 {
			st = http.StatusBadRequest
		}
		return fail(st, f.Code, f.Message)
	}
	if action != "GetParameter" {
		return fail(http.StatusBadRequest, "UnknownOperationException", "invented: the fake serves GetParameter only")
	}
	var in getParameterInput
	if err := json.NewDecoder(io.LimitReader(r.Body, 1<<16)).Decode(&in); err != nil || in.Name == "" {
		return fail(http.StatusBadRequest, "ValidationException", "1 validation error detected: Value null at 'name' failed to satisfy constraint: Member must not be null")
	}
	s.mu.Lock()
	p, ok := s.params[in.Name]
	s.mu.Unlock()
	if !ok {
		return fail(http.StatusBadRequest, "ParameterNotFound", "")
	}
	value := p.Value
	if p.Type == "SecureString" && !in.WithDecryption {
		// invented: the encrypted form. Without WithDecryption, GetParameter returns a
		// SecureString's value encrypted (GetParameterInput.WithDecryption, API model).
		value = "AQICAHh" + strings.Repeat("x", 40)
	}
	b, _ := json.Marshal(map[string]any{"Parameter": map[string]any{
		"Name": p.Name, "Type": p.Type, "Value": value, "Version": 1, "DataType": "text",
		"ARN": "arn:aws:ssm:" + s.opts.Region + ":" + s.opts.AccountID + ":parameter" + p.Name,
	}})
	return http.StatusOK, b
}
