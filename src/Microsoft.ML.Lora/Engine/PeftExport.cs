using System.Text.Json;
using System.Text.Json.Nodes;
using Microsoft.ML.Lora.Engine.Tasks;
using TorchSharp;
using static TorchSharp.torch;

namespace Microsoft.ML.Lora.Engine;

/// <summary>
/// Writes a trained model's adapter as a PEFT folder for any model family (<see cref="LoraTransformer.SavePeftAdapter"/>,
/// <see cref="LoraImageTransformer.SavePeftAdapter"/>): <see cref="PeftAdapter.Save"/> into a staging folder, then the head
/// (a <c>modules_to_save</c> entry) converted to the Python model's semantics by the task
/// (<see cref="LoraTask.HeadToHuggingFace"/>: binary as two logits [0, z], regression in label units, multiclass as it
/// is), the config edited by the family, and the family's extra files. Every file is written whole, then moved into place.
/// </summary>
internal static class PeftExport
{
    /// <param name="model">The model holding the adapter (LoRA layers and the head).</param>
    /// <param name="directory">The folder to write (created if needed).</param>
    /// <param name="headModule">The head's module path (<c>classifier</c>, <c>fc</c>).</param>
    /// <param name="label">The task and classes.</param>
    /// <param name="scaling">The regression label standardisation of the head.</param>
    /// <param name="editConfig">Changes to adapter_config.json (e.g. <c>task_type</c>).</param>
    /// <param name="extraFiles">Further files (name, text) to write beside the adapter.</param>
    /// <returns>The folder written.</returns>
    public static string Save(nn.Module model, string directory, string headModule, LabelInfo label, LabelScaling scaling,
        Action<JsonNode> editConfig, IEnumerable<(string Name, string Text)> extraFiles)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(directory);
        string weightKey = $"base_model.model.{headModule}.weight", biasKey = $"base_model.model.{headModule}.bias";
        string staging = Path.GetFullPath(directory).TrimEnd(Path.DirectorySeparatorChar) + ".staging-" + Guid.NewGuid().ToString("N");
        try
        {
            PeftAdapter.Save(model, staging);
            var (tensors, metadata) = SafeTensors.Read(Path.Combine(staging, PeftAdapter.WeightsFileName));
            try
            {
                var (weight, bias) = label.Task.HeadToHuggingFace(tensors[weightKey], tensors[biasKey], scaling);
                tensors[weightKey].Dispose();
                tensors[biasKey].Dispose();
                tensors[weightKey] = weight;
                tensors[biasKey] = bias;
                var config = JsonNode.Parse(File.ReadAllText(Path.Combine(staging, PeftAdapter.ConfigFileName)))!;
                editConfig(config);
                Directory.CreateDirectory(directory);
                SafeTensors.Write(Path.Combine(directory, PeftAdapter.WeightsFileName), tensors, metadata);
                AtomicFile.WriteText(Path.Combine(directory, PeftAdapter.ConfigFileName), config.ToJsonString(new JsonSerializerOptions { WriteIndented = true }));
                foreach (var (name, text) in extraFiles)
                {
                    AtomicFile.WriteText(Path.Combine(directory, name), text);
                }
            }
            finally
            {
                foreach (var tensor in tensors.Values)
                {
                    tensor.Dispose();
                }
            }
        }
        finally
        {
            if (Directory.Exists(staging))
            {
                Directory.Delete(staging, recursive: true);
            }
        }

        return directory;
    }
}
