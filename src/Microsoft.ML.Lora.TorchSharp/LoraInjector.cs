using System.Collections;
using System.Reflection;
using System.Text.RegularExpressions;
using TorchSharp;
using TorchSharp.Utils;
using static TorchSharp.torch;
using TorchModules = TorchSharp.Modules;

namespace Microsoft.ML.Lora;

/// <summary>The mechanics of <see cref="lora.inject_adapter_in_model"/>: matching, building and swapping modules.</summary>
internal static class LoraInjector
{
    /// <summary>Linear layers that "all-linear" leaves alone: output heads, as PEFT skips the output embedding layer.</summary>
    private static readonly HashSet<string> OutputHeadNames = new(StringComparer.Ordinal)
    {
        "lm_head", "classifier", "score", "qa_outputs",
    };

    internal static IReadOnlyList<string> Inject(LoraConfig config, nn.Module model) =>
        Inject(config, model, Modules.LoraLayer.DefaultAdapter, markTrainable: true);

    /// <summary>
    /// Gives adapter <paramref name="adapterName"/> to every module <paramref name="config"/> targets: plain modules are
    /// replaced by LoRA layers, LoRA layers that lack the adapter get it, those that have it are left alone.
    /// </summary>
    internal static IReadOnlyList<string> Inject(LoraConfig config, nn.Module model, string adapterName, bool markTrainable)
    {
        if (config.r <= 0)
        {
            throw new ArgumentOutOfRangeException(nameof(config), config.r, "LoraConfig.r must be positive.");
        }

        LoraArguments.Check(config.r, config.lora_alpha, config.lora_dropout);
        var bias = lora.ParseBias(config.bias);
        var init = LoraArguments.ParseInit(config.init_lora_weights);
        var matcher = TargetMatcher.Create(config);

        var modules = model.named_modules().ToList();
        var byPath = new Dictionary<string, nn.Module>(StringComparer.Ordinal) { [""] = model };
        foreach (var (path, module) in modules)
        {
            byPath[path] = module;
        }

        var loraPaths = modules.Where(m => m.module is Modules.LoraLayer).Select(m => m.name).ToList();
        var modelActive = modules.Select(m => m.module).OfType<Modules.LoraLayer>().FirstOrDefault(l => l.adapter_names.Count > 0)?.active_adapters;

        // Plan every change first, so that a failure leaves the model untouched.
        var plans = new List<(string path, Action apply)>();
        var matched = 0;
        foreach (var (path, module) in modules)
        {
            if (IsInsideLoraLayer(path, loraPaths) || (module is ILoraLayer && module is not Modules.LoraLayer) || !matcher.IsTarget(path, module))
            {
                continue;
            }

            matched++;
            var r = PatternValue(config.rank_pattern, path, config.r);
            var alpha = PatternValue(config.alpha_pattern, path, config.lora_alpha);
            LoraArguments.Check(r, alpha, config.lora_dropout);
            CheckSupported(module, path, r, config);
            if (module is Modules.LoraLayer existing)
            {
                if (existing.HasAdapter(adapterName))
                {
                    continue;
                }

                plans.Add((path, () =>
                {
                    existing.AddAdapter(adapterName, r, alpha, config.lora_dropout, config.use_rslora, init, config);
                    var on = existing.active_adapters.Contains(adapterName);
                    existing.get_lora_A(adapterName).requires_grad = on;
                    existing.get_lora_B(adapterName).requires_grad = on;
                }));
                continue;
            }

            var split = path.LastIndexOf('.');
            var parent = byPath[split < 0 ? "" : path[..split]];
            var name = path[(split + 1)..];
            var plan = PlanSwap(parent, name, module, path, typeof(Modules.LoraLayer));
            plans.Add((path, () =>
            {
                var replacement = CreateLayer(module, path, r, alpha, config, init, adapterName);
                replacement.train(module.training);
                if (modelActive is not null)
                {
                    replacement.SetActive(modelActive);
                }

                plan(replacement);
            }));
        }

        if (matched == 0)
        {
            var available = string.Join(", ", modules.Select(m => m.name).Where(n => n.Length > 0 && !IsInsideLoraLayer(n, loraPaths)));
            throw new ArgumentException(
                $"No module of the model matches target_modules {matcher.Description}. Available module names: {available}.",
                nameof(config));
        }

        var saved = ModulesToSave(config, modules);
        foreach (var (_, apply) in plans)
        {
            apply();
        }

        if (markTrainable)
        {
            lora.mark_only_lora_as_trainable(model, bias);
        }

        // Each adapter gets its own copy of modules_to_save (PEFT); the module shows the active adapter's copy, which trains.
        foreach (var module in saved.Distinct(ReferenceEqualityComparer.Instance).Cast<nn.Module>())
        {
            SavedModules.Register(module, adapterName);
        }

        SavedModules.Sync(model, lora.active_adapters(model), setGrad: false);
        foreach (var module in saved)
        {
            if (SavedModules.ShowsAdapter(module))
            {
                foreach (var parameter in module.parameters())
                {
                    parameter.requires_grad = true;
                }
            }
        }

        return plans.Select(p => p.path).ToList();
    }

    /// <summary>True when <paramref name="path"/> is a child of one of the LoRA layers (their factor containers).</summary>
    internal static bool IsInsideLoraLayer(string path, IReadOnlyList<string> loraPaths)
    {
        foreach (var lp in loraPaths)
        {
            if (path.Length > lp.Length && (lp.Length == 0 || (path.StartsWith(lp, StringComparison.Ordinal) && path[lp.Length] == '.')))
            {
                return true;
            }
        }

        return false;
    }

    private static Modules.LoraLayer CreateLayer(nn.Module module, string path, int r, double alpha, LoraConfig config, LoraInitKind init, string adapterName)
    {
        switch (module)
        {
            case TorchModules.Linear linear:
                return new Modules.Linear(linear.weight, linear.bias, r, alpha, config.lora_dropout,
                    fan_in_fan_out: false, config.merge_weights, config.use_rslora, init, adapterName, config);
            case TorchModules.Embedding embedding:
                // The padding row keeps getting no gradient in the LoRA table either (as the base embedding).
                return new Modules.Embedding(embedding.weight!, r, alpha, config.merge_weights, PaddingIndex(embedding),
                    config.use_rslora, init, adapterName, config);
            case TorchModules.Convolution conv when !conv.transposed:
                var dims = conv.kernel_size.Length;
                var stride = conv.stride;
                var padding = conv.padding!;
                var dilation = conv.dilation;
                return dims switch
                {
                    1 => new Modules.Conv1d(conv.weight, conv.bias, stride, padding, dilation, conv.groups, r, alpha,
                        config.lora_dropout, config.merge_weights, config.use_rslora, init, adapterName, config),
                    2 => new Modules.Conv2d(conv.weight, conv.bias, stride, padding, dilation, conv.groups, r, alpha,
                        config.lora_dropout, config.merge_weights, config.use_rslora, init, adapterName, config),
                    _ => new Modules.Conv3d(conv.weight, conv.bias, stride, padding, dilation, conv.groups, r, alpha,
                        config.lora_dropout, config.merge_weights, config.use_rslora, init, adapterName, config),
                };
            default:
                throw new ArgumentException(
                    $"Module '{path}' is a {module.GetType().Name}; LoRA supports Linear, Embedding, Conv1d, Conv2d and Conv3d.",
                    nameof(config));
        }
    }

    /// <summary>
    /// The <c>padding_idx</c> of a TorchSharp embedding, which TorchSharp keeps inside the native module and does not expose:
    /// the one row that gets no gradient when every row is looked up once, or null. Uses <c>autograd.grad</c>, so no
    /// <c>.grad</c> is touched; the weight's <c>requires_grad</c> is restored.
    /// </summary>
    private static long? PaddingIndex(TorchModules.Embedding embedding)
    {
        var weight = embedding.weight!;
        var requiresGrad = weight.requires_grad;
        try
        {
            using var scope = torch.NewDisposeScope();
            using var enable = torch.enable_grad();
            weight.requires_grad = true;
            var ids = torch.arange(weight.shape[0], dtype: ScalarType.Int64, device: weight.device);
            var output = embedding.forward(ids);
            var grad = torch.autograd.grad([output.sum()], [weight])[0];
            var rowsWithout = (grad.abs().sum(dim: 1) == 0).nonzero().reshape(-1);
            return rowsWithout.numel() == 1 ? rowsWithout.item<long>() : null;
        }
        finally
        {
            weight.requires_grad = requiresGrad;
        }
    }

    /// <summary>Throws unless <paramref name="module"/> is a type LoRA can replace (checked before anything changes).</summary>
    private static void CheckSupported(nn.Module module, string path, int r, LoraConfig config)
    {
        if (module is Modules.LoraConvNd { factorization: LoraConvFactorization.Peft } loraConv && r % loraConv.groups != 0)
        {
            throw new ArgumentException(
                $"Convolution '{path}' has groups = {loraConv.groups}; its rank ({r}) must be divisible by it (see rank_pattern).",
                nameof(config));
        }

        if (module is Modules.LoraLayer)
        {
            return;
        }

        if (module is not (TorchModules.Linear or TorchModules.Embedding or TorchModules.Convolution { transposed: false }))
        {
            throw new ArgumentException(
                $"Module '{path}' is a {module.GetType().Name}; LoRA supports Linear, Embedding, Conv1d, Conv2d and Conv3d.",
                nameof(config));
        }

        if (module is TorchModules.Convolution conv && (conv.padding is null || conv.padding_mode != PaddingModes.Zeros))
        {
            throw new ArgumentException(
                $"Convolution '{path}' uses padding {(conv.padding is null ? conv.padding_type.ToString() : conv.padding_mode.ToString())}; " +
                "LoRA supports explicit zero padding only.", nameof(config));
        }

        if (module is TorchModules.Convolution grouped && r % grouped.groups != 0)
        {
            throw new ArgumentException(
                $"Convolution '{path}' has groups = {grouped.groups}; its rank ({r}) must be divisible by it (see rank_pattern).",
                nameof(config));
        }
    }

    /// <summary>PEFT's pattern lookup: the first key whose regex matches <c>(.*\.)?(key)$</c> against the path.</summary>
    internal static T PatternValue<T>(IDictionary<string, T>? patterns, string path, T fallback)
    {
        if (patterns is null)
        {
            return fallback;
        }

        foreach (var (key, value) in patterns)
        {
            if (Regex.IsMatch(path, $"^(.*\\.)?({key})$", RegexOptions.CultureInvariant))
            {
                return value;
            }
        }

        return fallback;
    }

    /// <summary>True when <paramref name="name"/> equals <paramref name="path"/> or is a dot-aligned suffix of it.</summary>
    internal static bool NameMatches(string path, string name) =>
        path == name || path.EndsWith("." + name, StringComparison.Ordinal);

    private static List<nn.Module> ModulesToSave(LoraConfig config, List<(string name, nn.Module module)> modules)
    {
        var result = new List<nn.Module>();
        foreach (var wanted in config.modules_to_save ?? [])
        {
            var found = modules.Where(m => m.name.Length > 0 && NameMatches(m.name, wanted)).Select(m => m.module).ToList();
            if (found.Count == 0)
            {
                throw new ArgumentException(
                    $"modules_to_save entry '{wanted}' matches no module. Available module names: {string.Join(", ", modules.Select(m => m.name).Where(n => n.Length > 0))}.",
                    nameof(config));
            }

            result.AddRange(found);
        }

        return result;
    }

    /// <summary>
    /// Finds where <paramref name="parent"/> keeps <paramref name="child"/> (registry, fields, Sequential/ModuleList lists)
    /// and returns the action that puts a replacement in all those places.
    /// </summary>
    internal static Action<nn.Module> PlanSwap(nn.Module parent, string name, nn.Module child, string path, Type replacementType, string paramName = "model")
    {
        var registry = ModuleRegistry.Of(parent);
        var inRegistry = registry.TryGetValue(name, out var registered) && ReferenceEquals(registered, child);
        var setters = new List<Action<nn.Module>>();

        for (var type = parent.GetType(); type is not null && type != typeof(object); type = type.BaseType)
        {
            foreach (var field in type.GetFields(BindingFlags.Instance | BindingFlags.Public | BindingFlags.NonPublic | BindingFlags.DeclaredOnly))
            {
                var value = field.GetValue(parent);
                if (ReferenceEquals(value, child))
                {
                    if (!field.FieldType.IsAssignableFrom(replacementType))
                    {
                        throw new ArgumentException(
                            $"Cannot swap '{path}': {type.Name}.{field.Name} is declared as {field.FieldType.Name}. " +
                            "Declare it as Module<Tensor, Tensor> so that the LoRA layer can take its place.",
                            paramName);
                    }

                    setters.Add(replacement => field.SetValue(parent, replacement));
                }
                else if (value is IList list && !value.GetType().IsArray)
                {
                    var index = IndexOf(list, child);
                    if (index < 0)
                    {
                        continue;
                    }

                    var elementType = list.GetType().IsGenericType ? list.GetType().GetGenericArguments()[0] : typeof(object);
                    if (!elementType.IsAssignableFrom(replacementType))
                    {
                        throw new ArgumentException(
                            $"Cannot swap '{path}': {type.Name}.{field.Name} holds {elementType.Name} items.", paramName);
                    }

                    setters.Add(replacement => list[index] = replacement);
                }
            }
        }

        if (setters.Count == 0)
        {
            throw new ArgumentException(
                $"Cannot inject LoRA into '{path}': {parent.GetType().Name} keeps it in no field that forward could read. " +
                "Declare the sub-module as a field of type Module<Tensor, Tensor> named as the registered module.",
                paramName);
        }

        return replacement =>
        {
            if (inRegistry)
            {
                registry[name] = replacement; // keeps the registration order, so state_dict order is unchanged
            }

            foreach (var set in setters)
            {
                set(replacement);
            }
        };
    }

    private static int IndexOf(IList list, object item)
    {
        for (var i = 0; i < list.Count; i++)
        {
            if (ReferenceEquals(list[i], item))
            {
                return i;
            }
        }

        return -1;
    }

    /// <summary>Decides which module paths are targets, from names, a full-match regex or "all-linear".</summary>
    private sealed class TargetMatcher
    {
        private readonly Regex? _regex;
        private readonly IList<string> _names;
        private readonly bool _allLinear;
        private readonly IList<string> _exclude;
        private readonly IList<string> _save;
        private Regex? _excludeRegex;
        private IList<int>? _layers;
        private IList<string>? _layersPattern;

        private TargetMatcher(Regex? regex, IList<string> names, bool allLinear, IList<string> exclude, IList<string> save, string description)
        {
            _regex = regex;
            _names = names;
            _allLinear = allLinear;
            _exclude = exclude;
            _save = save;
            Description = description;
        }

        public string Description { get; }

        public static TargetMatcher Create(LoraConfig config)
        {
            var exclude = config.exclude_modules ?? [];
            var save = config.modules_to_save ?? [];
            if (!string.IsNullOrEmpty(config.target_modules_regex))
            {
                Regex regex;
                try
                {
                    regex = new Regex($"^(?:{config.target_modules_regex})$", RegexOptions.CultureInvariant);
                }
                catch (ArgumentException e)
                {
                    throw new ArgumentException($"target_modules_regex is not a valid regular expression: {e.Message}", nameof(config), e);
                }

                if (config.layers_to_transform is not null)
                {
                    throw new ArgumentException("layers_to_transform cannot be used with target_modules_regex (as in PEFT).", nameof(config));
                }

                return new TargetMatcher(regex, [], false, exclude, save, $"(regex \"{config.target_modules_regex}\")")
                {
                    _excludeRegex = ExcludeRegex(config),
                };
            }

            var names = config.target_modules;
            if (names is null || names.Count == 0)
            {
                throw new ArgumentException("LoraConfig needs target_modules (names or \"all-linear\") or target_modules_regex.", nameof(config));
            }

            var allLinear = names.Count == 1 && string.Equals(names[0], LoraConfig.AllLinear, StringComparison.OrdinalIgnoreCase);
            return new TargetMatcher(null, names, allLinear, exclude, save, "[" + string.Join(", ", names) + "]")
            {
                _excludeRegex = ExcludeRegex(config),
                _layers = config.layers_to_transform,
                _layersPattern = config.layers_pattern,
            };
        }

        private static Regex? ExcludeRegex(LoraConfig config)
        {
            if (string.IsNullOrEmpty(config.exclude_modules_regex))
            {
                return null;
            }

            try
            {
                return new Regex($"^(?:{config.exclude_modules_regex})$", RegexOptions.CultureInvariant);
            }
            catch (ArgumentException e)
            {
                throw new ArgumentException($"exclude_modules_regex is not a valid regular expression: {e.Message}", nameof(config), e);
            }
        }

        /// <summary>
        /// PEFT ≥ 0.20's layer filter: the first index in the path, i.e. the number after the first <c>.&lt;pattern&gt;.</c> (after the
        /// first dotted name without a pattern; PEFT's lazy <c>.*?\.[^.]*\.(\d+)\.</c>), must be listed. Nested indices (experts
        /// inside a layer) do not count.
        /// </summary>
        private bool InSelectedLayer(string path)
        {
            if (_layers is null)
            {
                return true;
            }

            Match? match = null;
            if (_layersPattern is null || _layersPattern.Count == 0)
            {
                match = Regex.Match(path, @"^.*?\.[^.]*\.(\d+)\.", RegexOptions.CultureInvariant);
            }
            else
            {
                foreach (var pattern in _layersPattern)
                {
                    match = Regex.Match(path, $@"^.*?\.{pattern}\.(\d+)\.", RegexOptions.CultureInvariant);
                    if (match.Success)
                    {
                        break;
                    }
                }
            }

            return match is { Success: true } && int.TryParse(match.Groups[1].Value, System.Globalization.CultureInfo.InvariantCulture, out var index)
                && _layers.Contains(index);
        }

        public bool IsTarget(string path, nn.Module module)
        {
            if (path.Length == 0 || _exclude.Any(e => NameMatches(path, e)) || (_excludeRegex?.IsMatch(path) ?? false))
            {
                return false;
            }

            if (_allLinear)
            {
                var last = path[(path.LastIndexOf('.') + 1)..];
                return module is TorchModules.Linear or Modules.Linear && !OutputHeadNames.Contains(last) && !_save.Any(s => NameMatches(path, s))
                    && InSelectedLayer(path);
            }

            if (_regex is not null)
            {
                return _regex.IsMatch(path);
            }

            // As PEFT: an exact path is always a target; a suffix match is subject to layers_to_transform.
            return _names.Contains(path) || (_names.Any(n => NameMatches(path, n)) && InSelectedLayer(path));
        }
    }
}
