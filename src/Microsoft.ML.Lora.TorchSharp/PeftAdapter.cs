using System.Globalization;
using TorchSharp;
using static TorchSharp.torch;

namespace Microsoft.ML.Lora;

/// <summary>
/// Reads and writes Hugging Face PEFT LoRA adapter directories (<c>adapter_config.json</c> + <c>adapter_model.safetensors</c>),
/// so adapters move between this library and Python's <c>peft</c>.
/// </summary>
/// <remarks>
/// <para>File layout (PEFT 0.20): tensors <c>base_model.model.&lt;module path&gt;.lora_A.weight</c> (r × in) and
/// <c>.lora_B.weight</c> (out × r) for Linear; <c>.lora_embedding_A</c> (r × num_embeddings) and <c>.lora_embedding_B</c>
/// (dim × r) for Embedding; <c>.lora_A.weight</c> (r × in × k…) and <c>.lora_B.weight</c> (out × r × 1…) for convolutions;
/// <see cref="LoraConfig.modules_to_save"/> and saved biases as <c>base_model.model.&lt;path&gt;.weight</c>/<c>.bias</c>
/// (the bias of an adapted module as <c>&lt;path&gt;.base_layer.bias</c>, where PEFT keeps it).
/// Metadata <c>{"format": "pt"}</c>. The adapter name is not part of the keys. <see cref="Load"/> also accepts keys without
/// the <c>base_model.model.</c> prefix, as transformers' built-in PEFT integration writes them.</para>
/// <para>An adapter named other than "default" lives in the sub-folder <c>&lt;directory&gt;/&lt;adapterName&gt;</c>, as PEFT's
/// <c>save_pretrained</c> writes it.</para>
/// <para><see cref="LoraConfig.modules_to_save"/> modules are kept per adapter, as PEFT does: each adapter that lists a
/// module has its own copy of its values (taken from the module's original values when the adapter is added). The model's
/// module shows the active adapter's copy (so <c>state_dict()</c> keys stay <c>classifier.weight</c>, and that copy is what
/// an optimizer trains), or the original values when no active adapter lists it; <see cref="lora.set_adapter"/> and
/// <see cref="lora.disable_adapter"/> swap the values. <see cref="Save"/> writes the named adapter's copy, and
/// <see cref="Load"/> fills it without changing the module unless that adapter is the one shown.</para>
/// </remarks>
public static class PeftAdapter
{
    /// <summary>The name of the configuration file in an adapter directory.</summary>
    public const string ConfigFileName = "adapter_config.json";

    /// <summary>The name of the weights file in an adapter directory.</summary>
    public const string WeightsFileName = "adapter_model.safetensors";

    private const string Prefix = "base_model.model.";

    private static readonly string DirectoryParam = "directory";

    /// <summary>
    /// Writes adapter <paramref name="adapterName"/> of <paramref name="model"/> as a PEFT adapter directory.
    /// </summary>
    /// <remarks>
    /// The config is the <see cref="LoraConfig"/> the adapter was created from when all its layers share one (injection,
    /// <see cref="lora.add_adapter"/>, <see cref="Load"/>); otherwise (layers built with <c>lora.Linear(...)</c>, weighted
    /// adapters) one is derived: <c>target_modules</c> lists the full module paths, and ranks/α that differ from the
    /// first layer's go to <c>rank_pattern</c>/<c>alpha_pattern</c>. Files are written to temporary files, then moved.
    /// <see cref="LoraConfig.modules_to_save"/> are written from the adapter's own copy, also while another adapter is active.
    /// </remarks>
    /// <param name="model">The model holding the adapter.</param>
    /// <param name="directory">The folder to write (created if needed).</param>
    /// <param name="adapterName">The adapter (default "default"); others go to <c>directory/adapterName</c>.</param>
    /// <returns>The folder that received the two files.</returns>
    /// <exception cref="ArgumentException">The model has no such adapter, or a layer holding it has no PEFT form
    /// (MergedLinear, grouped convolution).</exception>
    public static string Save(nn.Module model, string directory, string adapterName = lora.DEFAULT_ADAPTER)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentException.ThrowIfNullOrEmpty(directory);
        ArgumentException.ThrowIfNullOrEmpty(adapterName);
        var layers = lora.LoraLayers(model).Where(l => l.layer.HasAdapter(adapterName)).ToList();
        if (layers.Count == 0)
        {
            throw new ArgumentException(
                $"The model has no adapter named '{adapterName}'; it has [{string.Join(", ", lora.get_adapter_names(model))}].", nameof(adapterName));
        }

        foreach (var (path, layer) in layers)
        {
            if (layer is Modules.MergedLinear or Modules.LoraConvNd { groups: > 1 } or Modules.LoraConvNd { factorization: LoraConvFactorization.Loralib })
            {
                throw new ArgumentException(
                    $"Layer '{path}' is a {layer.GetType().Name}{(layer is Modules.LoraConvNd c ? (c.factorization == LoraConvFactorization.Loralib ? " with loralib's factorisation" : $" with groups = {c.groups}") : "")}, " +
                    "which has no equivalent in PEFT's file format.", nameof(model));
            }
        }

        var config = ConfigFor(layers, adapterName);
        var tensors = new Dictionary<string, Tensor>(StringComparer.Ordinal);
        foreach (var (path, layer) in layers)
        {
            var (aKey, bKey) = FactorKeys(layer);
            tensors[Prefix + Join(path, aKey)] = layer.get_lora_A(adapterName);
            tensors[Prefix + Join(path, bKey)] = layer.get_lora_B(adapterName);
        }

        var layerPaths = lora.LoraLayers(model).Select(l => l.path).ToHashSet(StringComparer.Ordinal);
        foreach (var (name, tensor) in ExtraTensors(model, config, layers, adapterName))
        {
            // PEFT wraps an adapted module, so its bias is "<path>.base_layer.bias" there.
            var owner = name.EndsWith(".bias", StringComparison.Ordinal) ? name[..^5] : null;
            tensors[Prefix + (owner is not null && layerPaths.Contains(owner) ? owner + ".base_layer.bias" : name)] = tensor;
        }

        var folder = adapterName == lora.DEFAULT_ADAPTER ? directory : Path.Combine(directory, adapterName);
        Directory.CreateDirectory(folder);
        SafeTensors.Write(Path.Combine(folder, WeightsFileName), tensors, new Dictionary<string, string> { ["format"] = "pt" });
        AtomicFile.WriteText(Path.Combine(folder, ConfigFileName), WriteConfig(config));
        return folder;
    }

    /// <summary>
    /// Loads a PEFT LoRA adapter directory into <paramref name="model"/> as adapter <paramref name="adapterName"/>: injects
    /// the LoRA layers its config describes (target_modules names, regex or "all-linear", exclude_modules, rank_pattern,
    /// alpha_pattern, use_rslora) and fills them from the weights file.
    /// </summary>
    /// <remarks>
    /// <para>The folder read is <c>directory/adapterName</c> when it holds an adapter_config.json, otherwise
    /// <paramref name="directory"/> itself (PEFT's <c>load_adapter(path, adapter_name)</c>).</para>
    /// <para>The adapter becomes active when the model had no adapter before; otherwise the active set is unchanged
    /// (call <see cref="lora.set_adapter"/>). Layers that already hold an adapter of that name are filled if their rank and
    /// scaling match. On any error the model is left as it was.</para>
    /// <para>Tensors of <see cref="LoraConfig.modules_to_save"/> fill the adapter's own copy of those modules: the model's
    /// module changes only when that adapter's copy is the one it shows (see <see cref="lora.set_adapter"/>).</para>
    /// </remarks>
    /// <param name="model">The base model (or a model with other adapters); changed in place.</param>
    /// <param name="directory">The adapter folder.</param>
    /// <param name="adapterName">The name to give the adapter (default "default").</param>
    /// <param name="log">Receives notes (ignored config keys, adapter layers missing from the file); default standard error.</param>
    /// <returns>Paths of the modules whose factors were loaded.</returns>
    /// <exception cref="FileNotFoundException">A file of the adapter directory is missing.</exception>
    /// <exception cref="ArgumentException">The config cannot be honoured (DoRA, PiSSA-style inits, layer_replication, …), a
    /// tensor's shape differs from its layer's (the key and both shapes are named), or a key matches no module.</exception>
    public static IReadOnlyList<string> Load(nn.Module model, string directory, string adapterName = lora.DEFAULT_ADAPTER,
        Action<string>? log = null)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentException.ThrowIfNullOrEmpty(directory);
        ArgumentException.ThrowIfNullOrEmpty(adapterName);
        log ??= Console.Error.WriteLine;
        var folder = File.Exists(Path.Combine(directory, adapterName, ConfigFileName)) ? Path.Combine(directory, adapterName) : directory;
        var configPath = Path.Combine(folder, ConfigFileName);
        var weightsPath = Path.Combine(folder, WeightsFileName);
        if (!File.Exists(configPath))
        {
            throw new FileNotFoundException($"No {ConfigFileName} in '{folder}'.", configPath);
        }

        if (!File.Exists(weightsPath))
        {
            throw new FileNotFoundException($"No {WeightsFileName} in '{folder}'.", weightsPath);
        }

        var config = ReadConfig(File.ReadAllText(configPath), configPath, log);
        var (tensors, _) = SafeTensors.Read(weightsPath);
        try
        {
            return LoadInto(model, config, tensors, adapterName, weightsPath, log);
        }
        finally
        {
            foreach (var t in tensors.Values)
            {
                t.Dispose();
            }
        }
    }

    /// <summary>Parses PEFT's <c>adapter_config.json</c> text; only <c>peft_type</c> ("LORA") is required.</summary>
    /// <param name="json">The file's text.</param>
    /// <param name="source">A name for messages (e.g. the file path).</param>
    /// <param name="log">Receives one line per ignored unknown key; default standard error.</param>
    /// <returns>The config.</returns>
    /// <exception cref="ArgumentException">peft_type is missing or not LORA, a value has the wrong type, or a setting cannot be
    /// honoured: use_dora, lora_bias, use_qalora, init_lora_weights pissa/olora/loftq/corda, layer_replication,
    /// target_parameters, trainable_token_indices, alora_invocation_tokens, null target_modules.</exception>
    public static LoraConfig ReadConfig(string json, string source = ConfigFileName, Action<string>? log = null)
    {
        ArgumentNullException.ThrowIfNull(json);
        return PeftConfigJson.Read(json, source, log ?? Console.Error.WriteLine);
    }

    /// <summary>Writes <paramref name="config"/> as PEFT's <c>adapter_config.json</c> text (sorted keys, <c>peft_type: "LORA"</c>).</summary>
    /// <param name="config">The config.</param>
    /// <returns>Indented JSON.</returns>
    public static string WriteConfig(LoraConfig config)
    {
        ArgumentNullException.ThrowIfNull(config);
        return PeftConfigJson.Write(config);
    }

    private static List<string> LoadInto(nn.Module model, LoraConfig config, Dictionary<string, Tensor> tensors,
        string adapterName, string weightsPath, Action<string> log)
    {
        // Sort the file's keys into factors per module path and other tensors, before touching the model.
        var factors = new Dictionary<string, (string? aKey, string? bKey)>(StringComparer.Ordinal);
        var others = new List<string>();
        foreach (var key in tensors.Keys.OrderBy(k => k, StringComparer.Ordinal))
        {
            // PeftModel.save_pretrained prefixes keys with "base_model.model."; transformers' own PEFT integration
            // (model.add_adapter / save_pretrained, used by sentence-transformers) writes bare module paths.
            var rest = StripPrefix(key);
            var (path, isA) = SplitFactorKey(rest);
            if (path is null)
            {
                others.Add(key);
                continue;
            }

            factors.TryGetValue(path, out var pair);
            factors[path] = isA ? (key, pair.bKey) : (pair.aKey, key);
        }

        // PEFT tolerates modules_to_save entries the model lacks (e.g. "score" next to "classifier" for SEQ_CLS).
        if (config.modules_to_save is { Count: > 0 } saveList)
        {
            var paths = model.named_modules().Select(m => m.name).Where(n => n.Length > 0).ToList();
            var kept = saveList.Where(w => paths.Any(p => LoraInjector.NameMatches(p, w))).ToList();
            foreach (var dropped in saveList.Except(kept))
            {
                log($"{weightsPath}: modules_to_save entry '{dropped}' matches no module of the model; ignored.");
            }

            config.modules_to_save = kept.Count > 0 ? kept : null;
        }

        var snapshot = ModelSnapshot.Take(model);
        try
        {
            if (lora.get_adapter_names(model).Contains(adapterName))
            {
                // Layers that already hold the adapter are filled; new targets get it too.
                LoraInjector.Inject(config, model, adapterName, markTrainable: false);
            }
            else
            {
                lora.add_adapter(model, adapterName, config);
            }

            var layers = lora.LoraLayers(model).Where(l => l.layer.HasAdapter(adapterName)).ToDictionary(l => l.path, l => l.layer);
            foreach (var (path, (aKey, bKey)) in factors)
            {
                if (!layers.TryGetValue(path, out var layer))
                {
                    throw new ArgumentException(
                        $"{weightsPath}: key '{aKey ?? bKey}' matches no module adapted by the config (module '{path}' " +
                        $"{(model.named_modules().Any(m => m.name == path) ? "is not targeted" : "does not exist")}).", DirectoryParam);
                }

                var (expectedA, expectedB) = FactorKeys(layer);
                CheckKeyKind(aKey, expectedA, layer, weightsPath);
                CheckKeyKind(bKey, expectedB, layer, weightsPath);
                var r = LoraInjector.PatternValue(config.rank_pattern, path, config.r);
                var alpha = LoraInjector.PatternValue(config.alpha_pattern, path, config.lora_alpha);
                var scaling = config.use_rslora ? alpha / Math.Sqrt(r) : alpha / r;
                if (layer.get_rank(adapterName) != r || Math.Abs(layer.get_scaling(adapterName) - scaling) > 1e-12 * Math.Abs(scaling))
                {
                    throw new ArgumentException(
                        $"Module '{path}' already holds adapter '{adapterName}' with rank {layer.get_rank(adapterName)} and scaling " +
                        $"{layer.get_scaling(adapterName).ToString(CultureInfo.InvariantCulture)}; the file describes rank {r} and scaling " +
                        $"{scaling.ToString(CultureInfo.InvariantCulture)}.", nameof(adapterName));
                }
            }

            foreach (var (path, layer) in layers)
            {
                if (!factors.TryGetValue(path, out var keys) || keys.aKey is null || keys.bKey is null)
                {
                    log($"{weightsPath}: no {(keys.aKey is null ? "A" : "B")} factor for module '{path}'; its adapter factors keep their initial values.");
                }
            }

            // Check every shape before copying anything.
            var copies = new List<(Tensor target, string key)>();
            foreach (var (path, (aKey, bKey)) in factors)
            {
                var layer = layers[path];
                if (aKey is not null)
                {
                    copies.Add((layer.get_lora_A(adapterName), aKey));
                }

                if (bKey is not null)
                {
                    copies.Add((layer.get_lora_B(adapterName), bKey));
                }
            }

            var state = model.state_dict();
            var extras = ExtraNames(model, config, layers.Keys.ToList());
            var saved = SavedModules.Entries(model);
            foreach (var key in others)
            {
                var name = StripPrefix(key).Replace(".base_layer.", ".", StringComparison.Ordinal);
                if (!extras.Contains(name) || !state.TryGetValue(name, out var target))
                {
                    throw new ArgumentException(
                        $"{weightsPath}: key '{key}' matches no module: '{name}' is neither a LoRA factor nor a parameter of " +
                        "modules_to_save or a bias the config saves.", DirectoryParam);
                }

                // modules_to_save: the adapter's own copy; the live module only while that copy is the one shown.
                copies.Add((SavedModules.StoredTensor(saved, name, adapterName) ?? target, key));
            }

            foreach (var (target, key) in copies)
            {
                CheckShape(target, tensors[key], key, weightsPath);
            }

            using (torch.no_grad())
            {
                using var scope = torch.NewDisposeScope();
                foreach (var (target, key) in copies)
                {
                    target.copy_(tensors[key].to(target.dtype).to(target.device));
                }
            }

            return factors.Keys.ToList();
        }
        catch
        {
            snapshot.Restore(model);
            throw;
        }
    }

    private static void CheckKeyKind(string? key, string expectedSuffix, Modules.LoraLayer layer, string weightsPath)
    {
        if (key is not null && !key.EndsWith("." + expectedSuffix, StringComparison.Ordinal))
        {
            throw new ArgumentException(
                $"{weightsPath}: key '{key}' does not fit module kind {layer.GetType().Name}, whose factor is stored as '…{expectedSuffix}'.", DirectoryParam);
        }
    }

    private static void CheckShape(Tensor target, Tensor source, string key, string weightsPath)
    {
        if (!target.shape.SequenceEqual(source.shape))
        {
            throw new ArgumentException(
                $"{weightsPath}: tensor '{key}' has shape [{string.Join(", ", source.shape)}] but the model expects " +
                $"[{string.Join(", ", target.shape)}].", DirectoryParam);
        }
    }

    /// <summary>"encoder.x.lora_A.weight" → ("encoder.x", true); null path when the key is not a LoRA factor.</summary>
    private static (string? path, bool isA) SplitFactorKey(string rest)
    {
        foreach (var (suffix, isA) in new[] { (".lora_A.weight", true), (".lora_B.weight", false), (".lora_embedding_A", true), (".lora_embedding_B", false) })
        {
            if (rest.EndsWith(suffix, StringComparison.Ordinal))
            {
                return (rest[..^suffix.Length], isA);
            }
        }

        return (null, false);
    }

    private static string StripPrefix(string key) =>
        key.StartsWith(Prefix, StringComparison.Ordinal) ? key[Prefix.Length..] : key;

    private static (string a, string b) FactorKeys(Modules.LoraLayer layer) => layer is Modules.Embedding
        ? ("lora_embedding_A", "lora_embedding_B")
        : ("lora_A.weight", "lora_B.weight");

    private static string Join(string path, string name) => path.Length == 0 ? name : path + "." + name;

    /// <summary>State-dict names (without prefix) of the non-LoRA tensors an adapter file carries: modules_to_save and biases.</summary>
    private static HashSet<string> ExtraNames(nn.Module model, LoraConfig config, IReadOnlyList<string> layerPaths)
    {
        var names = new HashSet<string>(StringComparer.Ordinal);
        var modules = model.named_modules().Where(m => m.name.Length > 0).ToList();
        foreach (var wanted in config.modules_to_save ?? [])
        {
            foreach (var (path, module) in modules.Where(m => LoraInjector.NameMatches(m.name, wanted)))
            {
                foreach (var (key, _) in module.state_dict())
                {
                    names.Add(path + "." + key);
                }
            }
        }

        var bias = lora.ParseBias(config.bias);
        foreach (var (key, _) in model.named_parameters())
        {
            if (!(key == "bias" || key.EndsWith(".bias", StringComparison.Ordinal)))
            {
                continue;
            }

            var owner = key.Length > 5 ? key[..^5] : "";
            if (bias == LoraBias.All || (bias == LoraBias.LoraOnly && layerPaths.Contains(owner)))
            {
                names.Add(key);
            }
        }

        return names;
    }

    private static IEnumerable<(string name, Tensor tensor)> ExtraTensors(nn.Module model, LoraConfig config,
        List<(string path, Modules.LoraLayer layer)> layers, string adapterName)
    {
        var names = ExtraNames(model, config, layers.Select(l => l.path).ToList());
        var saved = SavedModules.Entries(model);
        foreach (var (key, tensor) in model.state_dict())
        {
            if (names.Contains(key))
            {
                // The adapter's own copy of a modules_to_save module, also while another adapter's copy is live.
                yield return (key, SavedModules.StoredTensor(saved, key, adapterName) ?? tensor);
            }
        }
    }

    /// <summary>The adapter's own config when all its layers share one, else one derived from the layers.</summary>
    private static LoraConfig ConfigFor(List<(string path, Modules.LoraLayer layer)> layers, string adapterName)
    {
        var shared = layers[0].layer.ConfigOf(adapterName);
        if (shared is not null && layers.All(l => ReferenceEquals(l.layer.ConfigOf(adapterName), shared)))
        {
            return shared;
        }

        var first = layers[0].layer;
        var rslora = first.RsloraOf(adapterName);
        var config = new LoraConfig
        {
            r = first.get_rank(adapterName),
            lora_alpha = first.get_lora_alpha(adapterName),
            lora_dropout = first.DropoutOf(adapterName),
            use_rslora = rslora,
            target_modules = layers.Select(l => l.path).ToList(),
        };
        foreach (var (path, layer) in layers)
        {
            var r = layer.get_rank(adapterName);
            var key = path.Replace(".", "\\.", StringComparison.Ordinal);
            if (r != config.r)
            {
                config.rank_pattern[key] = r;
            }

            // α that gives this layer its scaling under the config's rsLoRA setting.
            var alpha = layer.get_scaling(adapterName) * (rslora ? Math.Sqrt(r) : r);
            if (Math.Abs(alpha - config.lora_alpha) > 1e-9 * Math.Abs(config.lora_alpha))
            {
                config.alpha_pattern[key] = alpha;
            }
        }

        return config;
    }
}
