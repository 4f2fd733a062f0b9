package profile

import (
	"fmt"
	"math"
	"math/big"
	"strings"
	"time"
	"unicode"

	"github.com/hashicorp/hcl/v2"
	"github.com/zclconf/go-cty/cty"
	"github.com/zclconf/go-cty/cty/convert"

	"github.com/odrkit/odrkit/tasklauncher"
)

var profileSchema = &hcl.BodySchema{
	Attributes: []hcl.AttributeSchema{
		{Name: "plugin"},
		{Name: "default"},
		{Name: "oci_url"},
		{Name: "env"},
		{Name: "startup_timeout"},
		{Name: "max_concurrent"},
		{Name: "launch_retries"},
	},
	Blocks: []hcl.BlockHeaderSchema{
		{Type: "target_runner"},
		{Type: "config"},
	},
}

var targetRunnerSchema = &hcl.BodySchema{
	Attributes: []hcl.AttributeSchema{{Name: "id"}, {Name: "labels"}},
}

// decodeProfile decodes and checks one runner_profile block. The returned
// decl holds the profile only when the block has no errors.
func (l *loader) decodeProfile(block *hcl.Block, ctx *hcl.EvalContext) *decl {
	d := &decl{}
	if len(block.Labels) != 1 {
		// The schema reports a missing label, and such a block never
		// reaches here, but a decl needs a name.
		return d
	}
	d.name = block.Labels[0]
	d.nameRange = block.LabelRanges[0]

	p := &Profile{Name: d.name, DeclRange: block.DefRange, sensitive: map[string]bool{}}
	var diags hcl.Diagnostics
	if err := checkName(d.name); err != nil {
		diags = append(diags, errorAt(d.nameRange, "Invalid runner profile name", err))
	}

	content, contentDiags := block.Body.Content(profileSchema)
	diags = append(diags, contentDiags...)
	attrs := content.Attributes
	dec := &attrDecoder{secrets: l.secrets, ctx: ctx, profile: p}

	pluginOK := dec.plugin(attrs["plugin"], block.DefRange, l.reg)
	if attr := attrs["default"]; attr != nil {
		if v, ok := dec.bool(attr); ok {
			p.Default = v
			d.isDefault = v
			d.defaultRange = attr.Expr.Range()
		}
	}
	if attr := attrs["oci_url"]; attr != nil {
		dec.ociURL(attr)
	}
	if attr := attrs["env"]; attr != nil {
		env, ok := dec.stringMap(attr, checkEnvName)
		if ok {
			p.Env = env.values
			p.sensitive["env_keys"] = env.keysSecret
		}
	}
	if attr := attrs["startup_timeout"]; attr != nil {
		dec.duration(attr)
	}
	if attr := attrs["max_concurrent"]; attr != nil {
		if n, ok := dec.count(attr, "max_concurrent", "the maximum number of runners of this profile that run at once, or 0 for no limit"); ok {
			p.MaxConcurrent = n
		}
	}
	if attr := attrs["launch_retries"]; attr != nil {
		if n, ok := dec.count(attr, "launch_retries", "how many times a launch that failed with a transient error is tried again, or 0 for none"); ok {
			p.LaunchRetries = n
		}
	}

	blocks := content.Blocks.ByType()
	if b := singleBlock(blocks["target_runner"], &dec.diags); b != nil {
		dec.targetRunner(b)
	}
	configBlock := singleBlock(blocks["config"], &dec.diags)
	if pluginOK {
		p.Config = l.decodeConfig(p.Plugin, configBlock, block, ctx, &dec.diags)
	}

	diags = append(diags, dec.diags...)
	if !diags.HasErrors() {
		d.profile = p
	}
	l.diags = append(l.diags, diags...)
	return d
}

// singleBlock returns the only block of a type, or nil when there is none,
// and reports repeated blocks.
func singleBlock(blocks hcl.Blocks, diags *hcl.Diagnostics) *hcl.Block {
	if len(blocks) == 0 {
		return nil
	}
	for _, b := range blocks[1:] {
		*diags = append(*diags, &hcl.Diagnostic{
			Severity: hcl.DiagError,
			Summary:  fmt.Sprintf("Duplicate %s block", b.Type),
			Detail:   fmt.Sprintf("A runner profile has at most one %s block, and one is already defined at %s. Merge the two blocks.", b.Type, shortPos(blocks[0].DefRange)),
			Subject:  b.DefRange.Ptr(),
		})
	}
	return blocks[0]
}

// errorAt returns an error diagnostic whose detail is err's message as a
// sentence.
func errorAt(r hcl.Range, summary string, err error) *hcl.Diagnostic {
	return &hcl.Diagnostic{
		Severity: hcl.DiagError,
		Summary:  summary,
		Detail:   sentence(err.Error()),
		Subject:  r.Ptr(),
	}
}

// sentence capitalizes msg and ends it with a period.
func sentence(msg string) string {
	if msg == "" {
		return msg
	}
	r := []rune(msg)
	r[0] = unicode.ToUpper(r[0])
	return endSentence(string(r))
}

// endSentence ends msg with a period.
func endSentence(msg string) string {
	if msg != "" && !strings.HasSuffix(msg, ".") {
		msg += "."
	}
	return msg
}

// attrDecoder decodes the attributes of one profile into it.
type attrDecoder struct {
	secrets *secrets
	ctx     *hcl.EvalContext
	profile *Profile
	diags   hcl.Diagnostics
}

func (d *attrDecoder) fail(r hcl.Range, summary, detail string) {
	d.diags = append(d.diags, &hcl.Diagnostic{
		Severity: hcl.DiagError,
		Summary:  summary,
		Detail:   detail,
		Subject:  r.Ptr(),
	})
}

// eval evaluates expr and converts it to ty. It returns false when the
// expression has errors, is null or cannot be converted; want describes
// the expected value in the error, such as "a string".
func (d *attrDecoder) eval(expr hcl.Expression, ty cty.Type, name, want string) (cty.Value, bool, bool) {
	val, secret, diags := d.secrets.eval(expr, d.ctx)
	d.diags = append(d.diags, diags...)
	if diags.HasErrors() {
		return cty.NilVal, secret, false
	}
	if val.IsNull() {
		d.fail(expr.Range(), fmt.Sprintf("Missing %s value", name),
			fmt.Sprintf("%s is null: set it to %s, or remove it to use the default.", name, want))
		return cty.NilVal, secret, false
	}
	if !val.IsWhollyKnown() {
		d.fail(expr.Range(), fmt.Sprintf("Unknown %s value", name),
			fmt.Sprintf("%s must be known when the profile is loaded: set it to %s.", name, want))
		return cty.NilVal, secret, false
	}
	converted, err := convert.Convert(val, ty)
	if err != nil {
		d.fail(expr.Range(), fmt.Sprintf("Invalid %s value", name),
			fmt.Sprintf("%s must be %s, but this value is %s.", name, want, val.Type().FriendlyName()))
		return cty.NilVal, secret, false
	}
	return converted, secret, true
}

// plugin decodes the plugin attribute and reports whether it names a
// registered plugin.
func (d *attrDecoder) plugin(attr *hcl.Attribute, defRange hcl.Range, reg *tasklauncher.Registry) bool {
	names := reg.Names()
	if attr == nil {
		d.fail(defRange, "Missing plugin",
			fmt.Sprintf("Every runner profile needs a plugin attribute that names a launcher plugin. %s", registeredText(names)))
		return false
	}
	val, secret, ok := d.eval(attr.Expr, cty.String, "plugin", `the name of a launcher plugin, such as "docker"`)
	if !ok {
		return false
	}
	name := val.AsString()
	d.profile.Plugin = name
	d.profile.sensitive["plugin"] = secret
	if _, ok := reg.Lookup(name); ok {
		return true
	}
	var detail string
	switch {
	case secret:
		detail = "The plugin name read through env() or file() is not registered in this host."
	case name == "":
		detail = "The plugin name is empty."
	default:
		detail = fmt.Sprintf("No launcher plugin named %q is registered in this host.", name)
		if s := closest(name, names); s != "" {
			detail += fmt.Sprintf(" Did you mean %q?", s)
		}
	}
	d.fail(attr.Expr.Range(), "Unknown launcher plugin", detail+" "+registeredText(names))
	return false
}

func registeredText(names []string) string {
	if len(names) == 0 {
		return "No launcher plugins are registered in this host: the host must register one with tasklauncher.Registry.Register before it loads profiles."
	}
	return fmt.Sprintf("Registered plugins: %s.", strings.Join(names, ", "))
}

func (d *attrDecoder) bool(attr *hcl.Attribute) (bool, bool) {
	val, _, ok := d.eval(attr.Expr, cty.Bool, "default", "true or false")
	if !ok {
		return false, false
	}
	return val.True(), true
}

func (d *attrDecoder) ociURL(attr *hcl.Attribute) {
	val, secret, ok := d.eval(attr.Expr, cty.String, "oci_url", `an image reference, such as "registry.example.com/acme/runner:1.4"`)
	if !ok {
		return
	}
	url := val.AsString()
	switch {
	case url == "":
		d.fail(attr.Expr.Range(), "Empty oci_url",
			"oci_url is empty: set it to an image reference, such as \"registry.example.com/acme/runner:1.4\", or remove it to use the host's default image.")
		return
	case strings.IndexFunc(url, func(r rune) bool { return unicode.IsSpace(r) || unicode.IsControl(r) }) >= 0:
		shown := fmt.Sprintf("%q ", url)
		if secret {
			shown = "read through env() or file() "
		}
		d.fail(attr.Expr.Range(), "Invalid oci_url",
			fmt.Sprintf("The image reference %scontains white space or control characters: remove them.", shown))
		return
	}
	d.profile.OCIURL = url
	d.profile.sensitive["oci_url"] = secret
}

func (d *attrDecoder) duration(attr *hcl.Attribute) {
	const want = `a Go duration with a unit, such as "90s" or "5m"`
	val, secret, ok := d.eval(attr.Expr, cty.String, "startup_timeout", want)
	if !ok {
		return
	}
	text := val.AsString()
	shown := fmt.Sprintf("%q", text)
	if secret {
		shown = "The value read through env() or file()"
	}
	timeout, err := time.ParseDuration(text)
	switch {
	case err != nil:
		d.fail(attr.Expr.Range(), "Invalid startup_timeout",
			fmt.Sprintf("%s is not a duration: write %s. Valid units are ns, us, ms, s, m and h.", shown, want))
	case timeout <= 0:
		d.fail(attr.Expr.Range(), "Invalid startup_timeout",
			fmt.Sprintf("%s is not positive: write %s, or remove startup_timeout to use the host's default.", shown, want))
	default:
		d.profile.StartupTimeout = timeout
	}
}

// count decodes a whole number that is 0 or more. meaning describes what
// the number sets, for the diagnostics.
func (d *attrDecoder) count(attr *hcl.Attribute, name, meaning string) (int, bool) {
	val, secret, ok := d.eval(attr.Expr, cty.Number, name, "a whole number, "+meaning)
	if !ok {
		return 0, false
	}
	bf := val.AsBigFloat()
	shown := bf.Text('g', 10) + " "
	if secret {
		shown = "read through env() or file() "
	}
	n, acc := bf.Int64()
	summary := "Invalid " + name
	switch {
	case !bf.IsInt():
		d.fail(attr.Expr.Range(), summary,
			fmt.Sprintf("The value %sis not a whole number: write %s.", shown, meaning))
	case bf.Sign() < 0:
		d.fail(attr.Expr.Range(), summary,
			fmt.Sprintf("The value %sis negative: write %s.", shown, meaning))
	case acc != big.Exact || n > math.MaxInt32:
		d.fail(attr.Expr.Range(), summary,
			fmt.Sprintf("The value %sis too large: write at most %d.", shown, math.MaxInt32))
	default:
		return int(n), true
	}
	return 0, false
}

func (d *attrDecoder) targetRunner(block *hcl.Block) {
	content, diags := block.Body.Content(targetRunnerSchema)
	d.diags = append(d.diags, diags...)
	if diags.HasErrors() {
		return
	}
	target := &TargetRunner{}
	var secret, ok = false, true
	idAttr, labelsAttr := content.Attributes["id"], content.Attributes["labels"]
	if idAttr != nil {
		val, idSecret, idOK := d.eval(idAttr.Expr, cty.String, "id", `a runner ID, such as "launcher-eu-1"`)
		ok = ok && idOK
		secret = secret || idSecret
		if idOK {
			target.ID = val.AsString()
			if target.ID == "" {
				d.fail(idAttr.Expr.Range(), "Empty target_runner id",
					"id is empty: set it to the ID of the runner that executes this profile's launch jobs, or select runners with labels instead.")
				ok = false
			}
		}
	}
	if labelsAttr != nil {
		labels, labelsOK := d.stringMap(labelsAttr, checkLabelKey)
		ok = ok && labelsOK
		secret = secret || labels.secret
		if labelsOK {
			target.Labels = labels.values
			if len(labels.values) == 0 {
				d.fail(labelsAttr.Expr.Range(), "Empty target_runner labels",
					"labels is empty, so it would select any runner: add at least one label, such as labels = { zone = \"eu-west\" }, or select one runner with id.")
				ok = false
			}
		}
	}
	if !ok {
		return
	}
	if err := checkTargetRunner(target); err != nil {
		r := block.DefRange
		if idAttr != nil && labelsAttr != nil {
			r = labelsAttr.Range
		}
		d.diags = append(d.diags, errorAt(r, "Invalid target_runner", err))
		return
	}
	d.profile.TargetRunner = target
	d.profile.sensitive["target_runner"] = secret
}

func checkLabelKey(key string) error {
	if key == "" {
		return fmt.Errorf("a label key is empty: use a non-empty key, such as zone")
	}
	return nil
}

// stringMap is a decoded map of strings such as env or labels.
type stringMap struct {
	values map[string]string
	// keysSecret reports whether a key was read through env() or file().
	keysSecret bool
	// secret reports whether a key or value was read through env() or
	// file().
	secret bool
}

// stringMap decodes a map of strings such as env or labels. It reports
// each invalid key or value at its own position where the expression is
// an object constructor, and at the whole expression otherwise.
func (d *attrDecoder) stringMap(attr *hcl.Attribute, checkKey func(string) error) (stringMap, bool) {
	name := attr.Name
	pairs, pairDiags := hcl.ExprMap(attr.Expr)
	if pairDiags.HasErrors() {
		return d.stringMapValue(attr, checkKey)
	}
	result := stringMap{values: make(map[string]string, len(pairs))}
	keyRanges := make(map[string]hcl.Range, len(pairs))
	ok := true
	for _, pair := range pairs {
		keyVal, keySecret, keyOK := d.eval(pair.Key, cty.String, name+" key", "a string")
		result.keysSecret = result.keysSecret || keySecret
		result.secret = result.secret || keySecret
		if !keyOK {
			ok = false
			continue
		}
		key := keyVal.AsString()
		if err := checkKey(key); err != nil {
			if keySecret {
				err = fmt.Errorf("a key of %s read through env() or file() is invalid: check the variable or file that it reads", name)
			}
			d.diags = append(d.diags, errorAt(pair.Key.Range(), fmt.Sprintf("Invalid %s key", name), err))
			ok = false
			continue
		}
		shownKey := fmt.Sprintf("%q", key)
		if keySecret {
			shownKey = "read through env() or file()"
		}
		if prev, dup := keyRanges[key]; dup {
			d.fail(pair.Key.Range(), fmt.Sprintf("Duplicate %s key", name),
				fmt.Sprintf("The key %s is already set at %s: remove one of the two.", shownKey, shortPos(prev)))
			ok = false
			continue
		}
		keyRanges[key] = pair.Key.Range()
		val, valSecret, valOK := d.eval(pair.Value, cty.String, fmt.Sprintf("%s %s", name, shownKey), "a string")
		result.secret = result.secret || valSecret
		if !valOK {
			ok = false
			continue
		}
		result.values[key] = val.AsString()
	}
	return result, ok
}

// stringMapValue decodes a map of strings from an expression that is not
// an object constructor, such as a for expression, so positions are those
// of the whole expression.
func (d *attrDecoder) stringMapValue(attr *hcl.Attribute, checkKey func(string) error) (stringMap, bool) {
	name := attr.Name
	const want = `a map of strings, such as { KEY = "value" }`
	val, secret, ok := d.eval(attr.Expr, cty.Map(cty.String), name, want)
	result := stringMap{keysSecret: secret, secret: secret}
	if !ok {
		return result, false
	}
	result.values = make(map[string]string, val.LengthInt())
	for it := val.ElementIterator(); it.Next(); {
		k, v := it.Element()
		key := k.AsString()
		if err := checkKey(key); err != nil {
			if secret {
				err = fmt.Errorf("a key of %s read through env() or file() is invalid: check the variable or file that it reads", name)
			}
			d.diags = append(d.diags, errorAt(attr.Expr.Range(), fmt.Sprintf("Invalid %s key", name), err))
			ok = false
			continue
		}
		if v.IsNull() {
			d.fail(attr.Expr.Range(), fmt.Sprintf("Missing %s value", name),
				fmt.Sprintf("The value of a %s key is null: set it to a string.", name))
			ok = false
			continue
		}
		result.values[key] = v.AsString()
	}
	return result, ok
}
