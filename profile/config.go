package profile

import (
	"fmt"
	"reflect"
	"slices"
	"strings"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/gohcl"
	"github.com/hashicorp/hcl/v2/hclsyntax"
	"github.com/zclconf/go-cty/cty"

	"github.com/odrkit/odrkit/tasklauncher"
)

// decodeConfig decodes a profile's config block, or an empty body when the
// block is absent, into a new config of the plugin and runs its Validate
// method. It returns nil when the config is invalid.
func (l *loader) decodeConfig(pluginName string, configBlock, profileBlock *hcl.Block, ctx *hcl.EvalContext, diags *hcl.Diagnostics) (config any) {
	plugin, _ := l.reg.Lookup(pluginName)

	var body hcl.Body
	subject := profileBlock.DefRange
	if configBlock != nil {
		body = configBlock.Body
		subject = configBlock.DefRange
	} else {
		// An empty body still reports missing required arguments, at the
		// profile's header.
		body = &hclsyntax.Body{SrcRange: subject, EndRange: subject}
	}

	// A plugin whose config struct gohcl cannot decode, or whose
	// NewConfig or Validate panics, has a bug. Report it at the profile
	// rather than crash the host.
	defer func() {
		if r := recover(); r != nil {
			*diags = append(*diags, &hcl.Diagnostic{
				Severity: hcl.DiagError,
				Summary:  "Launcher plugin failed to decode its config",
				Detail:   fmt.Sprintf("The launcher plugin %q panicked while decoding or validating its config: %v. This is a bug in the plugin: report it to its authors.", pluginName, r),
				Subject:  subject.Ptr(),
			})
			config = nil
		}
	}()

	config = plugin.NewConfig()
	if rv := reflect.ValueOf(config); !rv.IsValid() || rv.Kind() != reflect.Pointer || rv.IsNil() || rv.Elem().Kind() != reflect.Struct {
		*diags = append(*diags, &hcl.Diagnostic{
			Severity: hcl.DiagError,
			Summary:  "Launcher plugin has an invalid config type",
			Detail:   fmt.Sprintf("The launcher plugin %q returned %T from NewConfig, but it must return a non-nil pointer to a struct with hcl tags. This is a bug in the plugin: report it to its authors.", pluginName, config),
			Subject:  subject.Ptr(),
		})
		return nil
	}

	before, failedBefore := len(l.secrets.ranges), len(l.secrets.failed)
	decodeDiags := gohcl.DecodeBody(&secretBody{Body: body, secrets: l.secrets}, ctx, config)
	readsSecret := len(l.secrets.ranges) > before
	failed := l.secrets.failed[failedBefore:]
	schema, _ := gohcl.ImpliedBodySchema(config)
	for _, d := range decodeDiags {
		// An expression that failed to evaluate already has its error,
		// and gohcl adds "value must be known" for its unknown result.
		if d.Summary == "Unsuitable value type" && overlapsAny(d.Subject, failed) {
			continue
		}
		addValidKeys(d, pluginName, schema)
		if configBlock == nil && d.Summary == "Missing required argument" {
			d.Detail += fmt.Sprintf(" The %q plugin needs it in the profile's config block, such as config { ... }.", pluginName)
		}
		*diags = append(*diags, d)
	}
	if decodeDiags.HasErrors() {
		return nil
	}

	v, ok := config.(tasklauncher.ConfigValidator)
	if !ok {
		return config
	}
	if err := v.Validate(); err != nil {
		// The plugin's message follows a colon, so its first word (often a
		// key name such as stop_grace) keeps its case.
		detail := fmt.Sprintf("The %q plugin rejected this config: %s", pluginName, endSentence(err.Error()))
		if readsSecret {
			// Scrubbing catches an error that quotes a secret, but not
			// one that prints it converted, such as a number.
			l.secrets.ranges = append(l.secrets.ranges, subject)
		}
		*diags = append(*diags, &hcl.Diagnostic{
			Severity: hcl.DiagError,
			Summary:  "Invalid plugin config",
			Detail:   detail,
			Subject:  subject.Ptr(),
		})
		return nil
	}
	return config
}

// addValidKeys extends an unknown-key diagnostic of a config block with
// the plugin's valid keys and, when HCL found none, the closest one.
func addValidKeys(d *hcl.Diagnostic, pluginName string, schema *hcl.BodySchema) {
	switch d.Summary {
	case "Unsupported argument", "Unsupported block type", "Extraneous JSON object property":
	default:
		return
	}
	var names []string
	for _, a := range schema.Attributes {
		names = append(names, a.Name)
	}
	for _, b := range schema.Blocks {
		names = append(names, b.Type)
	}
	slices.Sort(names)
	if len(names) == 0 {
		d.Detail += fmt.Sprintf(" The %q plugin takes no config: remove the config block.", pluginName)
		return
	}
	if !strings.Contains(d.Detail, "Did you mean") {
		if given := quotedName(d.Detail); given != "" {
			if s := closest(given, names); s != "" {
				d.Detail += fmt.Sprintf(" Did you mean %q?", s)
			}
		}
	}
	d.Detail += fmt.Sprintf(" Valid keys for the %q plugin: %s.", pluginName, strings.Join(names, ", "))
}

// quotedName returns the first double-quoted word of an HCL message, such
// as memroy in `An argument named "memroy" is not expected here.`
func quotedName(msg string) string {
	start := strings.IndexByte(msg, '"')
	if start < 0 {
		return ""
	}
	end := strings.IndexByte(msg[start+1:], '"')
	if end < 0 {
		return ""
	}
	return msg[start+1 : start+1+end]
}

// secretBody wraps a config body so that every expression gohcl evaluates
// goes through secrets.eval: values read through env() or file() are
// recorded for scrubbing and reach gohcl without marks, which it cannot
// decode.
type secretBody struct {
	hcl.Body
	secrets *secrets
}

func (b *secretBody) Content(schema *hcl.BodySchema) (*hcl.BodyContent, hcl.Diagnostics) {
	content, diags := b.Body.Content(schema)
	return b.wrapContent(content), diags
}

func (b *secretBody) PartialContent(schema *hcl.BodySchema) (*hcl.BodyContent, hcl.Body, hcl.Diagnostics) {
	content, rest, diags := b.Body.PartialContent(schema)
	if rest != nil {
		rest = &secretBody{Body: rest, secrets: b.secrets}
	}
	return b.wrapContent(content), rest, diags
}

func (b *secretBody) JustAttributes() (hcl.Attributes, hcl.Diagnostics) {
	attrs, diags := b.Body.JustAttributes()
	return b.wrapAttributes(attrs), diags
}

func (b *secretBody) wrapContent(content *hcl.BodyContent) *hcl.BodyContent {
	if content == nil {
		return nil
	}
	wrapped := *content
	wrapped.Attributes = b.wrapAttributes(content.Attributes)
	wrapped.Blocks = make(hcl.Blocks, len(content.Blocks))
	for i, block := range content.Blocks {
		copied := *block
		copied.Body = &secretBody{Body: block.Body, secrets: b.secrets}
		wrapped.Blocks[i] = &copied
	}
	return &wrapped
}

func (b *secretBody) wrapAttributes(attrs hcl.Attributes) hcl.Attributes {
	if attrs == nil {
		return nil
	}
	wrapped := make(hcl.Attributes, len(attrs))
	for name, attr := range attrs {
		copied := *attr
		copied.Expr = &secretExpr{Expression: attr.Expr, secrets: b.secrets}
		wrapped[name] = &copied
	}
	return wrapped
}

// secretExpr evaluates its expression through secrets.eval.
type secretExpr struct {
	hcl.Expression
	secrets *secrets
}

func (e *secretExpr) Value(ctx *hcl.EvalContext) (cty.Value, hcl.Diagnostics) {
	val, _, diags := e.secrets.eval(e.Expression, ctx)
	return val, diags
}

// UnwrapExpression lets hcl.ExprList, hcl.ExprMap and similar helpers see
// the wrapped expression.
func (e *secretExpr) UnwrapExpression() hcl.Expression {
	return e.Expression
}
