using TorchSharp;
using static TorchSharp.torch;
using TorchModules = TorchSharp.Modules;

namespace Microsoft.ML.Lora;

public static partial class lora
{
    /// <summary>The per-row adapter name that means "base model only" in <see cref="adapter_names_scope"/> (PEFT's <c>"__base__"</c>).</summary>
    public const string BASE_ADAPTER_ROW = Modules.LoraLayer.BaseRow;

    /// <summary>The name of the adapter that <see cref="inject_adapter_in_model"/> creates (<c>"default"</c>, as PEFT).</summary>
    public const string DEFAULT_ADAPTER = Modules.LoraLayer.DefaultAdapter;

    /// <summary>
    /// Adds a named adapter to <paramref name="model"/> (PEFT's <c>add_adapter</c>): every module <paramref name="config"/>
    /// targets gets new factors for <paramref name="adapter_name"/>; plain modules are replaced by LoRA layers first.
    /// </summary>
    /// <remarks>
    /// <para>The new adapter is active only if the model had no adapter before; otherwise the active set is unchanged
    /// (call <see cref="set_adapter"/>), and the new factors train only once active. Base weights of adapted layers are
    /// frozen; other parameters keep their <c>requires_grad</c>, except <see cref="LoraConfig.modules_to_save"/>, which train
    /// while an adapter's copy of them is shown.</para>
    /// <para>Each adapter gets its own copy of the values of its <see cref="LoraConfig.modules_to_save"/> modules (PEFT), taken
    /// from the values the module had before any adapter listed it. The module in the model shows the active adapter's copy;
    /// adding an inactive adapter leaves the module's values as they are.</para>
    /// <para>The factors of an adapter other than "default" appear in <c>state_dict()</c> as
    /// <c>&lt;path&gt;.lora_adapters.&lt;name&gt;.lora_A</c> / <c>.lora_B</c>; "default" keeps <c>&lt;path&gt;.lora_A</c>.</para>
    /// </remarks>
    /// <param name="model">The model to change in place.</param>
    /// <param name="adapter_name">A new name: not empty, without '.', not "__base__", not yet used in the model.</param>
    /// <param name="config">Targets and settings of the adapter.</param>
    /// <returns>Paths of the modules that received the adapter.</returns>
    /// <exception cref="ArgumentException">The name is invalid or taken, or <paramref name="config"/> is invalid (see <see cref="inject_adapter_in_model"/>).</exception>
    public static IReadOnlyList<string> add_adapter(nn.Module model, string adapter_name, LoraConfig config)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(config);
        CheckNewAdapterName(model, adapter_name);
        return LoraInjector.Inject(config, model, adapter_name, markTrainable: false);
    }

    /// <summary>Names of all adapters of <paramref name="model"/>, in the order they first appear.</summary>
    /// <param name="model">The model.</param>
    /// <returns>The names.</returns>
    public static IReadOnlyList<string> get_adapter_names(nn.Module model)
    {
        ArgumentNullException.ThrowIfNull(model);
        return LoraLayers(model).SelectMany(l => l.layer.adapter_names).Distinct(StringComparer.Ordinal).ToList();
    }

    /// <summary>The active adapters of <paramref name="model"/> (those of its first LoRA layer; <see cref="set_adapter"/> sets all alike).</summary>
    /// <param name="model">The model.</param>
    /// <returns>The names, empty when the model has no LoRA layer.</returns>
    public static IReadOnlyList<string> active_adapters(nn.Module model)
    {
        ArgumentNullException.ThrowIfNull(model);
        return LoraLayers(model).Select(l => l.layer.active_adapters).FirstOrDefault() ?? [];
    }

    /// <summary>
    /// Makes <paramref name="adapter_names"/> the active adapters of every LoRA layer (PEFT's <c>set_adapter</c>); with several,
    /// their updates are summed. Merged layers unmerge the old set and merge the new one. Active factors get
    /// <c>requires_grad = true</c>, inactive ones false.
    /// </summary>
    /// <remarks>
    /// A <see cref="LoraConfig.modules_to_save"/> module shows the copy of the active adapter that lists it, or its original
    /// values (then frozen, as PEFT's original module) when none does; the outgoing copy's values are kept. Values are
    /// copied in place, so the module's parameters, and an optimizer built on them, stay the same objects. Pass the model
    /// that holds those modules.
    /// </remarks>
    /// <param name="model">The model.</param>
    /// <param name="adapter_names">One or more adapter names.</param>
    /// <exception cref="ArgumentException">No name given, a name is not an adapter of the model, or two of the names have
    /// their own copy of the same modules_to_save module (one module shows one copy; PEFT refuses too). Nothing is
    /// changed then.</exception>
    public static void set_adapter(nn.Module model, params string[] adapter_names)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(adapter_names);
        if (adapter_names.Length == 0)
        {
            throw new ArgumentException("Give at least one adapter name.", nameof(adapter_names));
        }

        CheckExisting(model, adapter_names, nameof(adapter_names));
        SavedModules.CheckOneCopyActive(model, adapter_names, nameof(adapter_names));
        foreach (var (_, layer) in LoraLayers(model))
        {
            layer.SetActive(adapter_names);
        }

        SavedModules.Sync(model, adapter_names, setGrad: true);
    }

    /// <summary>
    /// Removes adapter <paramref name="adapter_name"/> from every layer (unmerging it first); the active set loses it. Its
    /// copies of <see cref="LoraConfig.modules_to_save"/> are dropped; a module that showed one shows what the remaining
    /// active adapters select (their copy, or the original values).
    /// </summary>
    /// <param name="model">The model.</param>
    /// <param name="adapter_name">The adapter to delete.</param>
    /// <exception cref="ArgumentException">The model has no such adapter.</exception>
    public static void delete_adapter(nn.Module model, string adapter_name)
    {
        ArgumentNullException.ThrowIfNull(model);
        CheckExisting(model, [adapter_name], nameof(adapter_name));
        foreach (var (_, layer) in LoraLayers(model))
        {
            if (layer.HasAdapter(adapter_name))
            {
                layer.DeleteAdapter(adapter_name);
            }
        }

        SavedModules.Delete(model, adapter_name, active_adapters(model));
    }

    /// <summary>
    /// A scope in which <paramref name="model"/> runs without any adapter (PEFT's <c>disable_adapter()</c> context): every LoRA
    /// layer computes its base layer alone (merged layers are unmerged on their next forward), and every
    /// <see cref="LoraConfig.modules_to_save"/> module shows its original values. Disposing the scope enables the adapters
    /// again, shows the active adapter's copies and re-merges the layers that were merged when it began.
    /// </summary>
    /// <param name="model">The model.</param>
    /// <returns>The scope; dispose it to end it.</returns>
    public static IDisposable disable_adapter(nn.Module model)
    {
        ArgumentNullException.ThrowIfNull(model);
        var layers = LoraLayers(model).Select(l => l.layer).ToList();
        var wasMerged = layers.Where(l => l.merged).ToList();
        var wasDisabled = layers.Where(l => l.disable_adapters).ToList();
        foreach (var layer in layers)
        {
            layer.disable_adapters = true;
        }

        var endSaved = SavedModules.OverrideAll(model, _ => SavedModules.Original);
        return new Scope(() =>
        {
            foreach (var layer in layers)
            {
                layer.disable_adapters = wasDisabled.Contains(layer);
            }

            endSaved();

            foreach (var layer in wasMerged)
            {
                layer.merge();
            }
        });
    }

    /// <summary>
    /// A scope in which each forward of <paramref name="model"/> is a mixed-adapter batch (PEFT's <c>adapter_names=</c>
    /// argument): row i (dimension 0 of every LoRA layer's input) gets only the update of adapter
    /// <paramref name="adapter_names"/>[i], or none for <see cref="BASE_ADAPTER_ROW"/>. The result equals running each row
    /// with its adapter alone active. Merged layers are unmerged for the scope and merged again when it ends; merging
    /// inside the scope (<c>eval()</c>, <c>merge()</c>) makes forward throw <see cref="InvalidOperationException"/>.
    /// </summary>
    /// <param name="model">The model.</param>
    /// <param name="adapter_names">One adapter name per batch row.</param>
    /// <returns>The scope; dispose it to return to the active adapters.</returns>
    /// <exception cref="ArgumentException">A name is neither "__base__" nor an adapter of the model.</exception>
    /// <exception cref="NotSupportedException">Rows need different copies of a <see cref="LoraConfig.modules_to_save"/> module
    /// (two adapters that each have one, or one that has and one that has not): the module runs one copy per batch. When the
    /// rows need one copy, the module shows it for the scope.</exception>
    public static IDisposable adapter_names_scope(nn.Module model, IReadOnlyList<string> adapter_names)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(adapter_names);
        CheckExisting(model, adapter_names.Where(n => n != BASE_ADAPTER_ROW), nameof(adapter_names));
        var rows = adapter_names.ToArray();
        var savedSlots = new Dictionary<SavedModules.Entry, string>();
        foreach (var (path, _, entry) in SavedModules.Entries(model))
        {
            var slots = rows.Select(r => entry.Adapters.Contains(r) ? r : SavedModules.Original).Distinct(StringComparer.Ordinal).ToList();
            if (slots.Count > 1)
            {
                throw new NotSupportedException(
                    $"Rows of this batch need different copies of module '{path}' (modules_to_save: " +
                    $"{string.Join(", ", slots.Select(s => s == SavedModules.Original ? "the original" : $"adapter '{s}'"))}); " +
                    "a mixed batch can use one copy of it only. Run those rows in separate batches.");
            }

            savedSlots[entry] = slots.Count == 1 ? slots[0] : entry.Live;
        }

        var layers = LoraLayers(model).Select(l => l.layer).ToList();
        var wasMerged = layers.Where(l => l.merged).ToList();
        foreach (var layer in layers)
        {
            layer.unmerge(); // rows differ in their adapters: no merged weight can serve them all
            layer.SetRowAdapters(rows);
        }

        var endSaved = SavedModules.OverrideAll(model, entry => savedSlots[entry]);
        return new Scope(() =>
        {
            endSaved();
            foreach (var layer in layers)
            {
                layer.SetRowAdapters(null);
            }

            foreach (var layer in wasMerged)
            {
                layer.merge();
            }
        });
    }

    /// <summary>
    /// Merges adapters into the base weights and puts plain TorchSharp modules (<c>nn.Linear</c>, <c>nn.Embedding</c>,
    /// <c>nn.Conv1d/2d/3d</c>) in place of every LoRA layer (PEFT's <c>merge_and_unload</c>). The plain modules own the
    /// (merged) base tensors; the LoRA factors are dropped. <see cref="LoraConfig.modules_to_save"/> modules keep the active
    /// adapter's copy (as PEFT); the other copies are dropped.
    /// </summary>
    /// <param name="model">The model to change in place.</param>
    /// <param name="adapter_names">Adapters to merge; null (default) merges the active ones.</param>
    /// <returns><paramref name="model"/>, or the plain module when <paramref name="model"/> itself is a LoRA layer.</returns>
    public static nn.Module merge_and_unload(nn.Module model, IReadOnlyList<string>? adapter_names = null) =>
        Unload(model, merge: true, adapter_names);

    /// <summary>
    /// Removes every LoRA layer without merging (PEFT's <c>unload</c>): plain TorchSharp modules holding the original base
    /// weights take their places. <see cref="LoraConfig.modules_to_save"/> modules keep the active adapter's copy (as PEFT).
    /// </summary>
    /// <param name="model">The model to change in place.</param>
    /// <returns><paramref name="model"/>, or the plain module when <paramref name="model"/> itself is a LoRA layer.</returns>
    public static nn.Module unload(nn.Module model) => Unload(model, merge: false, null);

    /// <summary>
    /// Adds adapter <paramref name="adapter_name"/> combining existing adapters (PEFT's <c>add_weighted_adapter</c>), in every
    /// layer that holds at least one of them. Its α equals its rank, so its scaling is 1, and it is not activated.
    /// </summary>
    /// <remarks>
    /// <list type="bullet">
    /// <item><c>"linear"</c>: all ranks equal; A = Σ sign(wᵢ)·√|wᵢ·sᵢ|·Aᵢ and B = Σ √|wᵢ·sᵢ|·Bᵢ (sᵢ the scaling of adapter i),
    /// as PEFT: a negative weight's sign goes on A only. This is not Σ wᵢ·ΔWᵢ (cross terms appear) unless one adapter is
    /// combined, where it is exactly w·ΔW.</item>
    /// <item><c>"cat"</c>: rank Σ rᵢ; A stacks wᵢ·sᵢ·Aᵢ, B concatenates Bᵢ, so ΔW = Σ wᵢ·ΔWᵢ exactly.</item>
    /// <item><c>"svd"</c>: ΔW = Σ wᵢ·ΔWᵢ (each ΔWᵢ with its own scaling), truncated to rank <paramref name="svd_rank"/> (default: the largest
    /// rank) by a singular value decomposition: B = U·S, A = Vᴴ. Exact when the rank suffices.</item>
    /// </list>
    /// <para>"cat" and "svd" are refused for MergedLinear layers, grouped convolutions and convolutions with loralib's
    /// factorisation (their factors have block or reshaped structure).</para>
    /// </remarks>
    /// <param name="model">The model.</param>
    /// <param name="adapters">Existing adapter names.</param>
    /// <param name="weights">One weight per adapter.</param>
    /// <param name="adapter_name">The new adapter's name.</param>
    /// <param name="combination_type">"linear", "cat" or "svd" (default "svd", as PEFT).</param>
    /// <param name="svd_rank">Rank for "svd"; default the largest rank of <paramref name="adapters"/>.</param>
    /// <exception cref="ArgumentException">Unknown adapters or combination type, counts differ, ranks differ for "linear", a
    /// weight is not finite, the new name is taken, or a layer kind cannot take the combination.</exception>
    public static void add_weighted_adapter(nn.Module model, IReadOnlyList<string> adapters, IReadOnlyList<double> weights,
        string adapter_name, string combination_type = "svd", int? svd_rank = null)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(adapters);
        ArgumentNullException.ThrowIfNull(weights);
        WeightedAdapters.Add(model, adapters, weights, adapter_name, combination_type, svd_rank);
    }

    internal static List<(string path, Modules.LoraLayer layer)> LoraLayers(nn.Module model)
    {
        var result = new List<(string, Modules.LoraLayer)>();
        foreach (var (path, module) in model.named_modules())
        {
            if (module is Modules.LoraLayer layer)
            {
                result.Add((path, layer));
            }
        }

        if (model is Modules.LoraLayer self && !result.Any(r => ReferenceEquals(r.Item2, self)))
        {
            result.Insert(0, ("", self));
        }

        return result;
    }

    internal static void CheckNewAdapterName(nn.Module model, string adapter_name)
    {
        ArgumentException.ThrowIfNullOrEmpty(adapter_name);
        if (adapter_name.Contains('.', StringComparison.Ordinal) || adapter_name == BASE_ADAPTER_ROW)
        {
            throw new ArgumentException($"Adapter name '{adapter_name}' is reserved or contains '.'.", nameof(adapter_name));
        }

        if (get_adapter_names(model).Contains(adapter_name))
        {
            throw new ArgumentException($"The model already has an adapter named '{adapter_name}'.", nameof(adapter_name));
        }
    }

    private static void CheckExisting(nn.Module model, IEnumerable<string> names, string paramName)
    {
        var existing = get_adapter_names(model);
        foreach (var name in names)
        {
            if (name is null || !existing.Contains(name))
            {
                throw new ArgumentException(
                    $"'{name}' is not an adapter of the model; it has [{string.Join(", ", existing)}].", paramName);
            }
        }
    }

    private static nn.Module Unload(nn.Module model, bool merge, IReadOnlyList<string>? adapter_names)
    {
        ArgumentNullException.ThrowIfNull(model);
        if (adapter_names is not null)
        {
            CheckExisting(model, adapter_names, nameof(adapter_names));
        }

        var layers = LoraLayers(model);
        var byPath = model.named_modules().ToDictionary(m => m.name, m => m.module);
        byPath[""] = model;
        var swaps = new List<Action>();
        nn.Module? rootReplacement = null;
        foreach (var (path, layer) in layers)
        {
            var plain = (nn.Module?)null;
            Action build = () =>
            {
                layer.unmerge();
                if (merge)
                {
                    layer.MergeAdapters(adapter_names ?? layer.active_adapters);
                }

                plain = PlainModule(layer);
                layer.ForgetMergeState(); // the plain module owns the (merged) weight; drop the copy of W at once
            };
            if (path.Length == 0)
            {
                swaps.Add(() =>
                {
                    build();
                    rootReplacement = plain;
                });
                continue;
            }

            var split = path.LastIndexOf('.');
            var parent = byPath[split < 0 ? "" : path[..split]];
            var set = LoraInjector.PlanSwap(parent, path[(split + 1)..], layer, path, PlainType(layer), nameof(model));
            swaps.Add(() =>
            {
                build();
                plain!.train(layer.training);
                set(plain!);
            });
        }

        SavedModules.Forget(model); // the modules keep the active adapter's copy (as PEFT's unload)
        foreach (var swap in swaps)
        {
            swap();
        }

        return rootReplacement ?? model;
    }

    private static Type PlainType(Modules.LoraLayer layer) => layer switch
    {
        Modules.Embedding => typeof(TorchModules.Embedding),
        Modules.Conv1d => typeof(TorchModules.Conv1d),
        Modules.Conv2d => typeof(TorchModules.Conv2d),
        Modules.Conv3d => typeof(TorchModules.Conv3d),
        _ => typeof(TorchModules.Linear),
    };

    /// <summary>A plain TorchSharp module that holds the layer's own base tensors (transposed for fan_in_fan_out).</summary>
    private static nn.Module PlainModule(Modules.LoraLayer layer)
    {
        var w = layer.weight;
        var device = w.device;
        var dtype = w.dtype;
        switch (layer)
        {
            case Modules.Linear or Modules.MergedLinear:
            {
                var fanInFanOut = layer is Modules.Linear l ? l.fan_in_fan_out : ((Modules.MergedLinear)layer).fan_in_fan_out;
                var weight = fanInFanOut ? new TorchModules.Parameter(w.detach().t().contiguous(), w.requires_grad) : w;
                var linear = nn.Linear(weight.shape[1], weight.shape[0], hasBias: layer.bias is not null, device: device, dtype: dtype);
                linear.weight = weight;
                linear.bias = layer.bias;
                return linear;
            }

            case Modules.Embedding e:
            {
                var embedding = nn.Embedding(e.num_embeddings, e.embedding_dim, padding_idx: e.padding_idx, device: device, dtype: dtype);
                embedding.weight = w;
                return embedding;
            }

            case Modules.LoraConvNd c:
            {
                var k = c.kernel_size;
                TorchModules.Convolution conv = k.Length switch
                {
                    1 => nn.Conv1d(c.in_channels, c.out_channels, k[0], c.stride[0], c.padding[0], c.dilation[0],
                        groups: c.groups, bias: c.bias is not null, device: device, dtype: dtype),
                    2 => nn.Conv2d(c.in_channels, c.out_channels, (k[0], k[1]), (c.stride[0], c.stride[1]), (c.padding[0], c.padding[1]),
                        (c.dilation[0], c.dilation[1]), groups: c.groups, bias: c.bias is not null, device: device, dtype: dtype),
                    _ => nn.Conv3d(c.in_channels, c.out_channels, (k[0], k[1], k[2]), (c.stride[0], c.stride[1], c.stride[2]),
                        (c.padding[0], c.padding[1], c.padding[2]), (c.dilation[0], c.dilation[1], c.dilation[2]),
                        groups: c.groups, bias: c.bias is not null, device: device, dtype: dtype),
                };
                conv.weight = w;
                conv.bias = c.bias;
                return conv;
            }

            default:
                throw new InvalidOperationException($"No plain module for {layer.GetType().Name}.");
        }
    }

    private sealed class Scope(Action onDispose) : IDisposable
    {
        private Action? _onDispose = onDispose;

        public void Dispose()
        {
            _onDispose?.Invoke();
            _onDispose = null;
        }
    }
}
