package sandbox

import (
	"errors"
	"fmt"

	"github.com/containernetworking/cni/pkg/types"
)

// CNI error codes (the spec's well-known codes) used by the engine.
const (
	CodeIncompatibleVersion = types.ErrIncompatibleCNIVersion // 1
	CodeInvalidEnv          = types.ErrInvalidEnvironmentVariables
	CodeIOFailure           = types.ErrIOFailure
	CodeDecoding            = types.ErrDecodingFailure
	CodeInvalidConfig       = types.ErrInvalidNetworkConfig
	CodeInvalidNetns        = types.ErrInvalidNetNS
	CodeTryAgain            = types.ErrTryAgainLater
	CodeNotAvailable        = types.ErrPluginNotAvailable // 50
	CodeInternal            = types.ErrInternal
)

// Error is an engine error carrying the CNI error code the plugin returns.
type Error struct {
	Code uint
	Msg  string
	Err  error
}

func (e *Error) Error() string {
	if e.Err != nil {
		return e.Msg + ": " + e.Err.Error()
	}
	return e.Msg
}

func (e *Error) Unwrap() error { return e.Err }

func codedf(code uint, format string, args ...any) *Error {
	return &Error{Code: code, Msg: fmt.Sprintf(format, args...)}
}

func coded(code uint, err error, format string, args ...any) *Error {
	return &Error{Code: code, Msg: fmt.Sprintf(format, args...), Err: err}
}

// Code is err's CNI code: the code of the outermost *Error in its chain, or
// CodeInternal.
func Code(err error) uint {
	var e *Error
	if errors.As(err, &e) {
		return e.Code
	}
	return CodeInternal
}

// ErrInvalidRecord is wrapped by errors about a sandbox in phase invalid.
var ErrInvalidRecord = errors.New("sandbox record is invalid")
