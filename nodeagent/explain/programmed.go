package explain

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	kpov1 "kpo.dev/kpo/api/v1alpha1"
)

// ProgrammedState says how the model explained compares with the one a
// node's last report names.
type ProgrammedState string

const (
	// ModelProgrammed: the node's last report names this model: as of that
	// report, the kernel held exactly it.
	ModelProgrammed ProgrammedState = "Programmed"
	// NodeSettingsDiffer: the service ports are the ones the node
	// programmed, its node settings (NodePort addresses, detect-local,
	// service ranges) are not the ones derived from the API.
	NodeSettingsDiffer ProgrammedState = "NodeSettingsDiffer"
	// OtherModel: the last report names another model: the node had not
	// synced these objects when it wrote it (it may have since).
	OtherModel ProgrammedState = "OtherModel"
	// NotReported: the report names no model (an agent that does not
	// report it, or no successful sync yet).
	NotReported ProgrammedState = "NotReported"
)

// Programmed compares the model explained with the model a node reports it
// programmed.
type Programmed struct {
	State ProgrammedState `json:"state"`
	// Model is the hash of the model explained.
	Model ModelHash `json:"model"`
	// Reported is what the node's last report names (nil: nothing), and
	// ReportTime when that report was written.
	Reported   *kpov1.ProgrammedModel `json:"reported,omitempty"`
	ReportTime *metav1.Time           `json:"reportTime,omitempty"`
}

// CheckProgrammed compares model, the hash of a node's model built from
// the objects, with what the node's report r names.
func CheckProgrammed(r *kpov1.ProxyNodeReport, model ModelHash) Programmed {
	p := Programmed{Model: model, Reported: r.ProgrammedModel.DeepCopy(), ReportTime: r.LastReportTime.DeepCopy()}
	switch pm := r.ProgrammedModel; {
	case pm == nil || pm.Services == "":
		p.State = NotReported
	case pm.Services == model.Services && pm.Node == model.Node:
		p.State = ModelProgrammed
	case pm.Services == model.Services:
		p.State = NodeSettingsDiffer
	default:
		p.State = OtherModel
	}
	return p
}
