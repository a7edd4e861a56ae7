using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;

namespace Microsoft.ML.Lora;

/// <summary>PEFT's <c>adapter_config.json</c> for LoRA ↔ <see cref="LoraConfig"/>.</summary>
internal static class PeftConfigJson
{
    /// <summary>Keys PEFT 0.20 writes that change nothing for loading a LoRA adapter here (when null/false/empty, see <see cref="Read"/>).</summary>
    private static readonly HashSet<string> Informational = new(StringComparer.Ordinal)
    {
        "task_type", "base_model_name_or_path", "revision", "inference_mode", "auto_mapping", "peft_version",
        "megatron_config", "megatron_core", "loftq_config", "eva_config", "corda_config", "qalora_group_size",
        "runtime_config", "ensure_weight_tying", "arrow_config", "lora_ga_config",
    };

    private static readonly string[] RewritingInits = ["pissa", "olora", "loftq", "corda"];

    internal static string Write(LoraConfig config)
    {
        var root = new SortedDictionary<string, JsonNode?>(StringComparer.Ordinal)
        {
            ["alpha_pattern"] = Sorted(config.alpha_pattern.ToDictionary(kv => kv.Key, kv => (JsonNode?)Number(kv.Value))),
            ["auto_mapping"] = null,
            ["base_model_name_or_path"] = null,
            ["bias"] = config.bias,
            ["exclude_modules"] = !string.IsNullOrEmpty(config.exclude_modules_regex)
                ? config.exclude_modules_regex
                : config.exclude_modules is null ? null : new JsonArray(config.exclude_modules.Select(m => (JsonNode?)m).ToArray()),
            ["fan_in_fan_out"] = config.fan_in_fan_out,
            ["inference_mode"] = true,
            ["init_lora_weights"] = InitNode(config.init_lora_weights),
            ["layers_pattern"] = config.layers_pattern is null ? null : new JsonArray(config.layers_pattern.Select(m => (JsonNode?)m).ToArray()),
            ["layers_to_transform"] = config.layers_to_transform is null ? null : new JsonArray(config.layers_to_transform.Select(m => (JsonNode?)m).ToArray()),
            ["lora_alpha"] = Number(config.lora_alpha),
            ["lora_bias"] = false,
            ["lora_dropout"] = config.lora_dropout,
            ["modules_to_save"] = config.modules_to_save is null ? null : new JsonArray(config.modules_to_save.Select(m => (JsonNode?)m).ToArray()),
            ["peft_type"] = "LORA",
            ["r"] = config.r,
            ["rank_pattern"] = Sorted(config.rank_pattern.ToDictionary(kv => kv.Key, kv => (JsonNode?)kv.Value)),
            ["revision"] = null,
            ["target_modules"] = !string.IsNullOrEmpty(config.target_modules_regex)
                ? config.target_modules_regex
                : config.target_modules is { Count: 1 } one && string.Equals(one[0], LoraConfig.AllLinear, StringComparison.OrdinalIgnoreCase)
                    ? LoraConfig.AllLinear
                    : new JsonArray((config.target_modules ?? []).OrderBy(m => m, StringComparer.Ordinal).Select(m => (JsonNode?)m).ToArray()),
            ["task_type"] = null,
            ["use_dora"] = false,
            ["use_rslora"] = config.use_rslora,
        };
        var obj = new JsonObject();
        foreach (var (k, v) in root)
        {
            obj[k] = v;
        }

        return obj.ToJsonString(new JsonSerializerOptions { WriteIndented = true });
    }

    /// <summary>Reads a PEFT LoRA config; unknown keys are reported to <paramref name="log"/> and ignored.</summary>
    /// <exception cref="ArgumentException">peft_type is missing or not LORA, a value has the wrong type, or a setting cannot be honoured.</exception>
    internal static LoraConfig Read(string json, string source, Action<string> log)
    {
        JsonObject root;
        try
        {
            root = JsonNode.Parse(json)?.AsObject() ?? throw Bad(source, "the file is not a JSON object");
        }
        catch (Exception e) when (e is JsonException or InvalidOperationException)
        {
            throw new ArgumentException($"{source}: not a JSON object ({e.Message}).", nameof(json), e);
        }

        var peftType = root["peft_type"] is JsonValue pt && pt.TryGetValue<string>(out var ptv) ? ptv : null;
        if (peftType is null)
        {
            throw Bad(source, "\"peft_type\" is missing; expected \"LORA\"");
        }

        if (!string.Equals(peftType, "LORA", StringComparison.Ordinal))
        {
            throw Bad(source, $"peft_type is \"{peftType}\"; only LoRA adapters (\"LORA\") can be loaded");
        }

        var config = new LoraConfig();
        foreach (var (key, node) in root)
        {
            switch (key)
            {
                case "peft_type":
                    break;
                case "r":
                    config.r = Int(node, key, source, 8);
                    break;
                case "lora_alpha":
                    config.lora_alpha = Double(node, key, source, 8);
                    break;
                case "lora_dropout":
                    config.lora_dropout = Double(node, key, source, 0);
                    break;
                case "target_modules":
                    ReadTargets(config, node, source);
                    break;
                case "exclude_modules":
                    if (node is JsonValue v && v.TryGetValue<string>(out var excludeRegex))
                    {
                        config.exclude_modules_regex = excludeRegex;
                    }
                    else
                    {
                        config.exclude_modules = StringList(node, key, source);
                    }

                    break;
                case "modules_to_save":
                    config.modules_to_save = StringList(node, key, source);
                    break;
                case "rank_pattern":
                    config.rank_pattern = Map(node, key, source).ToDictionary(kv => kv.Key, kv => Int(kv.Value, $"rank_pattern[{kv.Key}]", source, 0));
                    break;
                case "alpha_pattern":
                    config.alpha_pattern = Map(node, key, source).ToDictionary(kv => kv.Key, kv => Double(kv.Value, $"alpha_pattern[{kv.Key}]", source, 0));
                    break;
                case "bias":
                    config.bias = node?.GetValue<string>() ?? "none";
                    if (config.bias is not ("none" or "all" or "lora_only"))
                    {
                        throw Bad(source, $"bias is \"{config.bias}\"; expected \"none\", \"all\" or \"lora_only\"");
                    }

                    break;
                case "use_rslora":
                    config.use_rslora = Bool(node, key, source);
                    break;
                case "fan_in_fan_out":
                    config.fan_in_fan_out = Bool(node, key, source);
                    break;
                case "use_dora":
                    Refuse(Bool(node, key, source), source, "use_dora is true: DoRA adapters (weight-decomposed LoRA) are not supported");
                    break;
                case "lora_bias":
                    Refuse(Bool(node, key, source), source, "lora_bias is true: a trainable bias on lora_B is not supported");
                    break;
                case "use_qalora":
                    Refuse(Bool(node, key, source), source, "use_qalora is true: QALoRA is not supported");
                    break;
                case "init_lora_weights":
                    ReadInit(node, source, log);
                    break;
                case "layers_to_transform":
                    config.layers_to_transform = node switch
                    {
                        null => null,
                        JsonArray list => list.Select(e => Int(e, key, source, 0)).ToList(),
                        _ => [Int(node, key, source, 0)],
                    };
                    break;
                case "layers_pattern":
                    config.layers_pattern = node is JsonValue pv && pv.TryGetValue<string>(out var one) ? [one] : StringList(node, key, source);
                    break;
                case "layer_replication":
                    Refuse(node is not null, source, "layer_replication is set: replicating base layers is not supported");
                    break;
                case "target_parameters":
                    Refuse(node is JsonArray { Count: > 0 }, source, "target_parameters is set: LoRA on raw parameters is not supported");
                    break;
                case "trainable_token_indices":
                    Refuse(node is not null, source, "trainable_token_indices is set: trainable tokens are not supported");
                    break;
                case "alora_invocation_tokens":
                    Refuse(node is not null, source, "alora_invocation_tokens is set: activated LoRA is not supported");
                    break;
                default:
                    if (!Informational.Contains(key))
                    {
                        log($"{source}: ignored unknown key \"{key}\".");
                    }

                    break;
            }
        }

        return config;
    }

    private static void ReadTargets(LoraConfig config, JsonNode? node, string source)
    {
        switch (node)
        {
            case null:
                throw Bad(source, "target_modules is null: PEFT then picks default targets by model type, which is not supported here; list the modules");
            case JsonValue v when v.TryGetValue<string>(out var s):
                if (string.Equals(s, LoraConfig.AllLinear, StringComparison.OrdinalIgnoreCase))
                {
                    config.target_modules = [LoraConfig.AllLinear];
                }
                else
                {
                    config.target_modules_regex = s;
                }

                break;
            default:
                config.target_modules = StringList(node, "target_modules", source);
                break;
        }
    }

    private static void ReadInit(JsonNode? node, string source, Action<string> log)
    {
        if (node is null || (node is JsonValue b && b.TryGetValue<bool>(out _)))
        {
            return;
        }

        var text = node is JsonValue v && v.TryGetValue<string>(out var s) ? s : node.ToJsonString();
        var lower = text.ToLowerInvariant();
        if (RewritingInits.Any(r => lower.StartsWith(r, StringComparison.Ordinal)))
        {
            throw Bad(source,
                $"init_lora_weights is \"{text}\": that initialisation rewrites the base weights, so the adapter is only valid on the " +
                "modified base. Convert it to a plain LoRA adapter in PEFT (path_initial_model_for_weight_conversion) first");
        }

        if (lower is "gaussian" or "orthogonal" or "eva")
        {
            log($"{source}: init_lora_weights \"{text}\" only chose the starting factors; the saved factors are loaded as they are.");
            return;
        }

        throw Bad(source, $"init_lora_weights is \"{text}\", which is not a known LoRA initialisation");
    }

    private static void Refuse(bool condition, string source, string what)
    {
        if (condition)
        {
            throw Bad(source, what);
        }
    }

    private static ArgumentException Bad(string source, string what) => new($"{source}: {what}.", nameof(source));

    private static int Int(JsonNode? node, string key, string source, int fallback)
    {
        if (node is null)
        {
            return fallback;
        }

        var d = Double(node, key, source, fallback);
        if (d != Math.Floor(d) || d > int.MaxValue || d < int.MinValue)
        {
            throw Bad(source, $"{key} must be an integer, got {node.ToJsonString()}");
        }

        return (int)d;
    }

    private static double Double(JsonNode? node, string key, string source, double fallback)
    {
        if (node is null)
        {
            return fallback;
        }

        if (node is JsonValue v && v.TryGetValue<double>(out var d))
        {
            return d;
        }

        throw Bad(source, $"{key} must be a number, got {node.ToJsonString()}");
    }

    private static bool Bool(JsonNode? node, string key, string source)
    {
        if (node is null)
        {
            return false;
        }

        if (node is JsonValue v && v.TryGetValue<bool>(out var b))
        {
            return b;
        }

        throw Bad(source, $"{key} must be true or false, got {node.ToJsonString()}");
    }

    private static List<string>? StringList(JsonNode? node, string key, string source)
    {
        if (node is null)
        {
            return null;
        }

        if (node is JsonArray array && array.All(e => e is JsonValue ev && ev.TryGetValue<string>(out _)))
        {
            return array.Select(e => e!.GetValue<string>()).ToList();
        }

        throw Bad(source, $"{key} must be a list of strings, got {node.ToJsonString()}");
    }

    private static List<KeyValuePair<string, JsonNode?>> Map(JsonNode? node, string key, string source) => node switch
    {
        null => [],
        JsonObject o => o.ToList(),
        _ => throw Bad(source, $"{key} must be an object, got {node.ToJsonString()}"),
    };

    private static JsonObject Sorted(Dictionary<string, JsonNode?> values)
    {
        var obj = new JsonObject();
        foreach (var (k, v) in values.OrderBy(kv => kv.Key, StringComparer.Ordinal))
        {
            obj[k] = v;
        }

        return obj;
    }

    /// <summary>An integral value as a JSON integer (PEFT writes lora_alpha as int), otherwise as a double.</summary>
    private static JsonValue Number(double value) =>
        value == Math.Floor(value) && Math.Abs(value) < 1e15 ? JsonValue.Create((long)value) : JsonValue.Create(value);

    private static JsonNode? InitNode(string init) => init.Trim().ToUpperInvariant() switch
    {
        "TRUE" => true,
        "FALSE" => false,
        _ => init.ToString(CultureInfo.InvariantCulture),
    };
}
