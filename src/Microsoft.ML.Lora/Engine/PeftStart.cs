// Errors about an option name the LoraFineTuningOptions field as the parameter, as the user set it there.
#pragma warning disable CA2208

namespace Microsoft.ML.Lora.Engine;

/// <summary>Starting a fine-tune from an existing PEFT adapter directory (<see cref="LoraFineTuningOptions.InitialPeftAdapter"/>).</summary>
internal static class PeftStart
{
    /// <summary>Reads and checks the adapter's config: the model is built from its rank, alpha and target list.</summary>
    public static LoraConfig ReadConfig(string directory)
    {
        string path = Path.Combine(directory, PeftAdapter.ConfigFileName);
        if (!File.Exists(path))
        {
            throw new ArgumentException($"No PEFT adapter at '{directory}': '{path}' does not exist.", nameof(LoraFineTuningOptions.InitialPeftAdapter));
        }

        var config = PeftAdapter.ReadConfig(File.ReadAllText(path), path);
        if (config.target_modules is null || config.target_modules.Count == 0 || config.target_modules_regex is not null)
        {
            throw new ArgumentException(
                $"The PEFT adapter '{path}' selects its target modules by a regular expression; LoraFineTune needs a list of module names (e.g. [\"query\", \"value\"]).",
                nameof(LoraFineTuningOptions.InitialPeftAdapter));
        }

        return config;
    }

    /// <summary>
    /// Fills the injected layers (and the head, when the adapter saved it) from the adapter's tensors. A head in Hugging
    /// Face's form (as <see cref="LoraTransformer.SavePeftAdapter"/> and Python PEFT write it) is converted to ours first
    /// (<see cref="HuggingFaceHead.FromHuggingFace"/>), in a staged copy of the directory.
    /// </summary>
    public static void Load(LoraTextModel model, string directory, Action<string> log)
    {
        string weights = Path.Combine(directory, PeftAdapter.WeightsFileName);
        if (!File.Exists(weights))
        {
            PeftAdapter.Load(model.Model, directory, log: log);   // reports the missing file
            return;
        }

        var (tensors, metadata) = SafeTensors.Read(weights);
        string staging = Path.Combine(Path.GetTempPath(), "mllora-peft-" + Guid.NewGuid().ToString("N"));
        try
        {
            if (tensors.TryGetValue(HuggingFaceHead.WeightKey, out var weight) && tensors.TryGetValue(HuggingFaceHead.BiasKey, out var bias))
            {
                var (ours, oursBias) = HuggingFaceHead.FromHuggingFace(model.Label.Task, model.Scaling, weight, bias);
                weight.Dispose();
                bias.Dispose();
                tensors[HuggingFaceHead.WeightKey] = ours;
                tensors[HuggingFaceHead.BiasKey] = oursBias;
            }

            Directory.CreateDirectory(staging);
            SafeTensors.Write(Path.Combine(staging, PeftAdapter.WeightsFileName), tensors, metadata);
            File.Copy(Path.Combine(directory, PeftAdapter.ConfigFileName), Path.Combine(staging, PeftAdapter.ConfigFileName));
            PeftAdapter.Load(model.Model, staging, log: log);
        }
        finally
        {
            foreach (var tensor in tensors.Values)
            {
                tensor.Dispose();
            }

            if (Directory.Exists(staging))
            {
                Directory.Delete(staging, recursive: true);
            }
        }
    }
}
